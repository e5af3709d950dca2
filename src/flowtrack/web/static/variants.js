// The campaign page's A/B section: which variant leads on which rate, with what confidence.
// It draws the `abTest` of each stats snapshot (GetCampaignStats / the live stats): every pair of
// variants and each variant against the rest, per rate, the difference with its 95% interval, the
// p-value and the verdict the server computed (domain/abtest.py). Nothing is computed here.
"use strict";
const flowtrackVariants = (function () {
  const { count, el } = ft;
  // Each rate with its denominator, as docs/concepts.md names them.
  const RATES = {
    delivery: ["Delivery rate", "success / submitted"],
    read: ["Read rate", "read / submitted"],
    reply: ["Reply rate", "replied / submitted"],
    link_click: ["Link click rate (humans)", "unique human clickers / submitted; bot clicks (previews, scanners) left out"],
    goal: ["Goal rate", "goal achieved / entered the flow"],
  };
  const LEADS = new Set(["AB_VERDICT_VARIANT_LEADS", "AB_VERDICT_OTHER_LEADS"]);
  let last = null;

  function rateName(rate) {
    return (RATES[rate] || [rate])[0];
  }
  // "90/100 · 90.0%" (successes / trials, and the rate).
  function arm(successes, trials) {
    const n = Number(trials || 0);
    const x = Number(successes || 0);
    return count(x) + "/" + count(n) + (n ? " · " + ((x / n) * 100).toFixed(1) + "%" : "");
  }
  // A difference of rates in percentage points, signed: "+30.0".
  function points(value) {
    if (value === undefined || value === null) return "-";
    const v = Number(value) * 100;
    return (v >= 0 ? "+" : "−") + Math.abs(v).toFixed(1);
  }
  function pValue(value) {
    if (value === undefined || value === null) return "-";
    const p = Number(value);
    return p < 0.001 ? "< 0.001" : p.toFixed(3);
  }
  function versus(c) {
    return c.variant + " vs " + (c.againstRest ? "the rest" : c.other);
  }

  // A line per lead, from the leader's side: "B leads A on link click rate: +6.1 pts, 95% CI +2.5 to +9.8, p = 0.001".
  function headline(ab) {
    const found = [];
    for (const c of ab.comparisons || []) {
      for (const r of c.rates || []) {
        if (!LEADS.has(r.verdict)) continue;
        const flip = r.verdict === "AB_VERDICT_OTHER_LEADS";
        const loser = flip ? c.variant : (c.againstRest ? "the rest" : c.other);
        const diff = flip ? -Number(r.difference) : r.difference;
        const low = flip ? -Number(r.ciHigh) : r.ciLow;
        const high = flip ? -Number(r.ciLow) : r.ciHigh;
        const p = pValue(r.pValue);
        found.push(el("li", { "data-pair": versus(c), "data-rate": r.rate },
          el("strong", {}, r.summary), " " + loser + " on ", rateName(r.rate).toLowerCase(), ": ",
          points(diff), " pts, 95% CI ", points(low), " to ", points(high), ", p ", p.startsWith("<") ? p : "= " + p));
      }
    }
    if (found.length === 0) return el("p", { id: "ab-none" }, "No variant leads on any rate yet.");
    return el("ul", { id: "ab-leads" }, found);
  }

  // A rate no recipient of either arm has reached yet (no read, reply... event at all) gets no row,
  // only a mention under the table; delivery always has its row.
  function hasData(r) {
    return r.rate === "delivery" || Number(r.successes || 0) + Number(r.otherSuccesses || 0) > 0;
  }

  function table(c, level) {
    const other = c.againstRest ? "The rest" : "Variant " + c.other;
    const empty = (c.rates || []).filter((r) => !hasData(r));
    return el("div", { class: "scroll" }, el("table", {
      class: "data ab", "data-variant": c.variant, "data-other": c.other || "", "data-rest": c.againstRest ? "true" : "false",
    },
    el("caption", {}, versus(c)),
    el("thead", {}, el("tr", {},
      el("th", { scope: "col" }, "Rate"),
      el("th", { scope: "col", class: "num" }, "Variant " + c.variant),
      el("th", { scope: "col", class: "num" }, other),
      el("th", { scope: "col", class: "num" }, c.variant + " − " + (c.againstRest ? "the rest" : c.other) + " (pts)"),
      el("th", { scope: "col", class: "num" }, level + " interval (pts)"),
      el("th", { scope: "col", class: "num" }, "p-value"),
      el("th", { scope: "col" }, "Verdict"))),
    el("tbody", {}, (c.rates || []).filter(hasData).map((r) => el("tr", { "data-rate": r.rate },
      el("th", { scope: "row", title: (RATES[r.rate] || ["", ""])[1] }, rateName(r.rate),
        el("span", { class: "muted" }, " (" + (RATES[r.rate] || ["", "?"])[1] + ")")),
      el("td", { class: "num" }, arm(r.successes, r.trials)),
      el("td", { class: "num" }, arm(r.otherSuccesses, r.otherTrials)),
      el("td", { class: "num" }, points(r.difference)),
      el("td", { class: "num" }, r.ciLow === undefined ? "-" : "[" + points(r.ciLow) + ", " + points(r.ciHigh) + "]"),
      el("td", { class: "num" }, pValue(r.pValue)),
      el("td", { class: "verdict", "data-verdict": r.verdict }, LEADS.has(r.verdict) ? el("strong", {}, r.summary) : r.summary))))),
    empty.length ? el("p", { class: "muted", "data-empty-rates": empty.map((r) => r.rate).join(" ") },
      "No data yet (not enough data) for: " + empty.map((r) => rateName(r.rate).toLowerCase()).join(", ") + ".") : null);
  }

  // Draw the A/B test of a stats snapshot (only when it changed).
  function render(stats) {
    const box = document.querySelector("#ab-test");
    if (!box) return;
    const ab = stats.abTest || null;
    const key = JSON.stringify(ab);
    if (key === last) return;
    last = key;
    if (!ab || !(ab.comparisons || []).length) {
      box.replaceChildren(el("p", { class: "muted" }, "Fewer than two A/B variants: nothing to compare."));
      return;
    }
    const level = Math.round(Number(ab.confidence) * 100) + "%";
    box.replaceChildren(
      headline(ab),
      ...ab.comparisons.map((c) => table(c, level)),
      el("p", { class: "muted", id: "ab-method" },
        "Method: " + ab.method + ". No verdict (\u201cnot enough data\u201d) before " + count(ab.minTrials) +
        " trials per variant and " + count(ab.minExpected) +
        " expected successes and failures per variant. With many variants and rates, some leads are chance: confirm before acting."));
  }

  return { render };
})();
