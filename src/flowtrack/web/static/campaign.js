// One campaign's page: stats tiles (live, from server-sent events), breakdowns,
// failure reasons, clicks and their map, timeline, and the paged message report.
"use strict";
(function () {
  const { count, percent, when, statusName, stateName, getJSON, el, fill, showError, signIn, campaignPath } = ft;
  // The id is one percent-encoded path segment (an id may hold '/', '%', '?', '#': any printable ASCII).
  const rawId = location.pathname.slice("/campaigns/".length);
  let id = rawId;
  try { id = decodeURIComponent(rawId); } catch (e) { /* not valid percent-encoding: the id as written */ }
  const base = campaignPath(id);
  const $ = (sel) => document.querySelector(sel);
  const pageError = $("#page-error");

  const TILES = [
    ["total", "Total", null],
    ["submitted", "Submitted", null],
    ["success", "Success", "successRate"],
    ["deliveryNotConfirmed", "Delivery not confirmed", "deliveryNotConfirmedRate"],
    ["failed", "Failed", "failureRate"],
    ["notSubmitted", "Not submitted", "notSubmittedRate"],
    ["pending", "Pending", null],
  ];
  const RATES = [
    ["successRate", "Success rate"],
    ["failureRate", "Failure rate"],
    ["deliveryNotConfirmedRate", "Delivery-not-confirmed rate"],
    ["notSubmittedRate", "Not-submitted rate"],
    ["clickThroughRate", "Click-through rate"],
  ];
  // Engagement and funnel figures: shown as soon as the stats carry them.
  const ENGAGEMENT = [
    ["read", "Read"], ["replied", "Replied"], ["replies", "Replies"], ["conversationsInitiated", "Conversations initiated"],
    ["optedOut", "Opted out"], ["buttonClickers", "Button clickers"], ["buttonClicks", "Button clicks"],
    ["entered", "Entered flow"], ["inFlow", "In flow"], ["exited", "Exited flow"], ["goalAchieved", "Goal achieved"],
    ["deliveryRate", "Delivery rate"], ["readRate", "Read rate"], ["replyRate", "Reply rate"],
    ["linkClickRate", "Link click rate"], ["buttonClickRate", "Button click rate"], ["optOutRate", "Opt-out rate"],
    ["goalRate", "Goal rate"],
  ];

  function tile(label, value, note, field) {
    return el("div", { class: "tile", "data-field": field },
      el("div", { class: "tile-label" }, label),
      el("div", { class: "tile-value" }, value),
      note ? el("div", { class: "tile-note" }, note) : null);
  }

  // Every field named in ENGAGEMENT found in the overall bucket or the stats (any depth, not the breakdowns).
  function engagement(stats) {
    const found = new Map();
    function walk(obj) {
      if (!obj || typeof obj !== "object" || Array.isArray(obj)) return;
      for (const [k, v] of Object.entries(obj)) {
        if (k === "byChannel" || k === "byVariant") continue;
        if (v !== null && typeof v === "object") walk(v);
        else if (!found.has(k)) found.set(k, v);
      }
    }
    walk(stats.overall);
    walk(stats);
    return ENGAGEMENT.filter(([k]) => found.has(k)).map(([k, label]) => {
      const v = found.get(k);
      return tile(label, /Rate$/.test(k) ? percent(v) : count(v), null, k);
    });
  }

  let lastSequence = null;

  let widthChosen = false;
  // The timeline's first bucket width follows the campaign's span: minutes for
  // a few hours, hours for a few days, days beyond.
  function chooseWidth(stats) {
    if (widthChosen || !stats.firstEventTime) return;
    widthChosen = true;
    const span = (new Date(stats.lastEventTime) - new Date(stats.firstEventTime)) / 1000;
    $("#width").value = span <= 3 * 3600 ? "minute" : span <= 4 * 86400 ? "hour" : "day";
  }

  // The header: id, state, audience (live: the stats' total), channels, labels.
  let campaign = null;
  function renderMeta(audience) {
    if (!campaign) return;
    const c = campaign;
    const labels = Object.entries(c.labels || {}).map(([k, v]) => k + "=" + v).join(" ");
    const parts = [c.id, stateName(c.state)];
    const tail = [(c.channels || []).join(", "), labels].filter(Boolean);
    $("#meta").replaceChildren(...[...parts, el("span", { id: "audience" }, "audience " + count(audience))]
      .flatMap((p, i) => (i ? [" · ", p] : [p])), ...tail.map((t) => " · " + t));
  }

  function renderStats(stats) {
    chooseWidth(stats);
    const o = stats.overall;
    const c = o.counts;
    renderMeta(c.total);
    fill($("#tiles"), TILES.map(([k, label, rate]) => tile(label, count(c[k]), rate ? percent(o.rates[rate]) : null, k)));
    fill($("#rates"), [
      ...RATES.map(([k, label]) => tile(label, percent(o.rates[k]), null, k)),
      tile("Clicks", count(o.clicks), null, "clicks"),
      tile("Unique clickers", count(o.uniqueClickers), null, "uniqueClickers"),
    ]);
    const extra = engagement(stats);
    fill($("#engagement"), extra);
    $("#engagement-box").hidden = extra.length === 0;
    charts.stacked($("#status-chart"), [
      { label: "Pending", value: Number(c.pending), color: charts.COLORS.pending },
      { label: "Not submitted", value: Number(c.notSubmitted), color: charts.COLORS.notSubmitted },
      { label: "Awaiting report", value: Number(c.awaiting), color: charts.COLORS.awaiting },
      { label: "Delivery not confirmed", value: Number(c.deliveryNotConfirmed), color: charts.COLORS.deliveryNotConfirmed },
      { label: "Success", value: Number(c.success), color: charts.COLORS.success },
      { label: "Failed", value: Number(c.failed), color: charts.COLORS.failed },
    ], "Messages by status, of the audience of " + count(c.total));
    renderBuckets(stats);
    if (typeof flowtrackVariants !== "undefined") flowtrackVariants.render(stats); // the A/B section (variants.js)
    const span = stats.firstEventTime ? "events from " + when(stats.firstEventTime) + " to " + when(stats.lastEventTime) + " UTC" : "no events yet";
    $("#live-text").textContent = "live · sequence " + count(stats.sequence) + " · " + span;
  }

  function renderBuckets(stats) {
    const cols = [["All", stats.overall], ...(stats.byChannel || []).map((b) => [(b.key || "(none)") + " · channel", b]),
      ...(stats.byVariant || []).map((b) => ["Variant " + (b.key || "(none)"), b])];
    const rows = [
      ["Total", (b) => count(b.counts.total)], ["Pending", (b) => count(b.counts.pending)],
      ["Not submitted", (b) => count(b.counts.notSubmitted)], ["Submitted", (b) => count(b.counts.submitted)],
      ["Awaiting report", (b) => count(b.counts.awaiting)], ["Delivery not confirmed", (b) => count(b.counts.deliveryNotConfirmed)],
      ["Success", (b) => count(b.counts.success)], ["Failed", (b) => count(b.counts.failed)],
      ...RATES.map(([k, label]) => [label, (b) => percent(b.rates[k])]),
      ["Clicks", (b) => count(b.clicks)], ["Unique clickers", (b) => count(b.uniqueClickers)],
      ...ENGAGEMENT.filter(([k]) => k in stats.overall || k in (stats.overall.rates || {})).map(([k, label]) =>
        [label, (b) => (k in b ? count(b[k]) : percent((b.rates || {})[k]))]),
    ];
    $("#buckets thead").replaceChildren(el("tr", {}, el("th", { scope: "col" }, ""), cols.map(([h]) => el("th", { scope: "col", class: "num" }, h))));
    fill($("#buckets tbody"), rows.map(([label, f]) => el("tr", {}, el("th", { scope: "row" }, label), cols.map(([, b]) => el("td", { class: "num" }, f(b))))));
    charts.donut($("#channel-chart"), (stats.byChannel || []).map((b) => ({ label: b.key || "(none)", value: Number(b.counts.submitted) })), "Submitted messages by channel");
    const variants = stats.byVariant || [];
    const vbox = $("#variant-chart");
    if (variants.length === 0) vbox.replaceChildren(el("p", { class: "muted" }, "No A/B variants."));
    else vbox.replaceChildren(el("div", { class: "variants" }, variants.map((b) => el("div", { class: "variant" },
      el("h4", {}, "Variant " + (b.key || "(none)")),
      el("p", {}, "Submitted ", el("strong", {}, count(b.counts.submitted))),
      el("p", {}, "Success rate ", el("strong", {}, percent(b.rates.successRate))),
      el("p", {}, "Failure rate ", el("strong", {}, percent(b.rates.failureRate))),
      el("p", {}, "Click-through ", el("strong", {}, percent(b.rates.clickThroughRate)))))));
  }

  async function loadCampaign() {
    try {
      const body = await getJSON(base);
      const c = body.campaign;
      document.title = (c.name || c.id) + " · flowtrack";
      $("#title").textContent = c.name || c.id;
      campaign = c;
      renderMeta(c.recipientCount);
    } catch (error) {
      showError(pageError, error.status === 404 ? "Campaign not found." : error);
      $("#live-text").textContent = "not connected";
      throw error;
    }
  }

  async function loadFailures() {
    const body = await getJSON(base + "/failures?page_size=100");
    const reasons = body.reasons || [];
    fill($("#failure-table tbody"), reasons.map((r) => el("tr", {},
      el("td", {}, el("code", {}, r.code)), el("td", {}, r.message), el("td", { class: "num" }, count(r.count)),
      el("td", { class: "num" }, percent(r.shareOfFailed)), el("td", { class: "num" }, percent(r.shareOfNotSubmitted)),
      el("td", {}, (r.sampleRecipients || []).join(", ")))));
    $("#failures-empty").hidden = reasons.length > 0;
  }

  function clickRows(tbody, buckets, label, total) {
    fill(tbody, buckets.map((b) => el("tr", {}, el("td", {}, label(b)), el("td", { class: "num" }, count(b.clicks)),
      el("td", { class: "num" }, count(b.uniqueClickers)), el("td", { class: "num" }, charts.share(Number(b.clicks), total)))));
  }

  async function loadClicks() {
    const body = await getJSON(base + "/clicks");
    const total = Number(body.clicks);
    $("#click-totals").textContent = count(body.clicks) + " clicks by " + count(body.uniqueClickers) + " unique clickers.";
    const none = (v) => v || "(unknown)";
    clickRows($("#by-link tbody"), body.byLink || [], (b) => none(b.linkId), total);
    clickRows($("#by-country tbody"), body.byCountry || [], (b) => none(b.countryCode), total);
    clickRows($("#by-region tbody"), body.byRegion || [], (b) => none(b.countryCode) + " · " + none(b.region), total);
    clickRows($("#by-city tbody"), body.byCity || [], (b) => [none(b.countryCode), none(b.region), none(b.city)].join(" · "), total);
    const report = await getJSON(base + "/click-report");
    const points = (report.rows || []).filter((r) => r.location && r.location.latitude !== undefined && r.location.longitude !== undefined)
      .map((r) => ({ lat: Number(r.location.latitude), lon: Number(r.location.longitude), label: [r.location.city, r.location.countryCode].filter(Boolean).join(", ") }));
    const places = charts.map($("#map"), points, "Click locations: " + count(points.length) + " clicks with a location");
    $("#map-note").textContent = count(points.length) + " clicks with a location at " + count(places) + " places" +
      (report.resumeToken && (report.rows || []).length >= 5000 ? " (the first " + count((report.rows || []).length) + " clicks)" : "") + ".";
  }

  const STEP = { minute: 60e3, hour: 3600e3, day: 86400e3 };

  // The server sends only buckets with events; the chart shows time evenly,
  // so the gaps are filled with empty buckets (at most 2,000 in all).
  function continuous(buckets, width) {
    if (buckets.length < 2) return buckets;
    const step = STEP[width];
    const first = new Date(buckets[0].startTime).getTime();
    const last = new Date(buckets[buckets.length - 1].startTime).getTime();
    if ((last - first) / step > 2000) return buckets;
    const byTime = new Map(buckets.map((b) => [new Date(b.startTime).getTime(), b]));
    const out = [];
    for (let t = first; t <= last; t += step) out.push(byTime.get(t) || { startTime: new Date(t).toISOString() });
    return out;
  }

  async function loadTimeline() {
    const width = $("#width").value;
    const body = await getJSON(base + "/timeline?width=" + width);
    const buckets = body.buckets || [];
    const shown = continuous(buckets, width);
    charts.timeline($("#timeline-chart"), shown, "Events per " + width);
    if (shown.length) {
      $("#timeline-chart").append(el("p", { class: "axis muted" },
        "From " + when(shown[0].startTime) + " to " + when(shown[shown.length - 1].startTime) + " UTC, one bar per " + width + "."));
    }
    fill($("#timeline-table tbody"), buckets.map((b) => el("tr", {}, el("td", {}, when(b.startTime)),
      ["notSubmitted", "submitted", "deliveryNotConfirmed", "success", "failed", "clicks"].map((k) => el("td", { class: "num" }, count(b[k]))))));
  }

  // -- message report: the server pages it; we keep the tokens of the pages seen.
  const form = $("#message-filters");
  let tokens = [""];
  let page = 0;

  function filterParams() {
    const data = new FormData(form);
    const params = new URLSearchParams();
    for (const s of data.getAll("status")) params.append("status", String(s));
    for (const k of ["channel", "variant", "recipient", "failure_code"]) {
      const v = String(data.get(k) || "").trim();
      if (v) params.set(k, v);
    }
    return params;
  }

  function updateExports() {
    const params = filterParams();
    const link = (a, kind, format, p) => { $(a).href = base + "/export?" + new URLSearchParams([...(p || []), ["kind", kind], ["format", format]]); };
    link("#export-csv", "messages", "csv", params);
    link("#export-xlsx", "messages", "xlsx", params);
    link("#export-clicks-csv", "clicks", "csv");
    link("#export-clicks-xlsx", "clicks", "xlsx");
    link("#export-failures-csv", "failure-reasons", "csv");
    link("#export-failures-xlsx", "failure-reasons", "xlsx");
  }

  async function loadMessages() {
    const params = filterParams();
    params.set("page_size", String(new FormData(form).get("page_size") || "50"));
    if (tokens[page]) params.set("resume_token", tokens[page]);
    const box = $("#messages-error");
    try {
      const body = await getJSON(base + "/messages?" + params);
      showError(box, null);
      const rows = body.rows || [];
      fill($("#message-table tbody"), rows.map((r) => el("tr", {},
        el("td", {}, r.recipient), el("td", {}, statusName(r.status)), el("td", { class: "num" }, count(r.attempt)),
        el("td", {}, r.channel), el("td", {}, r.variant),
        el("td", {}, r.failureReason ? [r.failureReason.code, r.failureReason.message].filter(Boolean).join(": ") : ""),
        el("td", {}, when(r.submittedTime)), el("td", {}, when(r.updateTime)), el("td", { class: "num" }, count(r.clicks)))));
      const size = Number(params.get("page_size"));
      tokens[page + 1] = rows.length >= size ? body.resumeToken : "";
      $("#next").disabled = !tokens[page + 1];
      $("#prev").disabled = page === 0;
      $("#page-label").textContent = "Page " + count(page + 1) + " · " + count(rows.length) + " rows";
    } catch (error) {
      showError(box, error);
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    tokens = [""];
    page = 0;
    updateExports();
    loadMessages();
  });
  $("#next").addEventListener("click", () => { page += 1; loadMessages(); });
  $("#prev").addEventListener("click", () => { page = Math.max(0, page - 1); loadMessages(); });
  $("#width").addEventListener("change", () => loadTimeline().catch((e) => showError(pageError, e)));

  // -- live: stats from the server-sent events; the other sections follow at most every 2 s.
  let detailsTimer = null;
  function refreshDetails() {
    if (detailsTimer !== null) return;
    detailsTimer = setTimeout(() => {
      detailsTimer = null;
      Promise.all([loadFailures(), loadClicks(), loadTimeline()]).catch((e) => showError(pageError, e));
    }, 1000);
  }

  function connect() {
    const source = new EventSource(base + "/live");
    const dot = $("#live");
    source.addEventListener("stats", (event) => {
      const stats = JSON.parse(event.data).stats;
      dot.classList.add("on");
      renderStats(stats);
      if (lastSequence !== null && stats.sequence !== lastSequence) refreshDetails();
      lastSequence = stats.sequence;
    });
    source.addEventListener("signed-out", () => {
      source.close();
      signIn("SESSION_EXPIRED");
    });
    source.addEventListener("failed", (event) => {
      source.close();
      dot.classList.remove("on");
      const body = JSON.parse(event.data);
      $("#live-text").textContent = "live updates stopped: " + (body.detail || "error");
    });
    source.addEventListener("deleted", () => {
      source.close();
      dot.classList.remove("on");
      $("#live-text").textContent = "this campaign was deleted";
    });
    source.addEventListener("error", () => {
      dot.classList.remove("on");
      $("#live-text").textContent = "reconnecting…";
    });
  }

  updateExports();
  loadCampaign().then(() => {
    return getJSON(base + "/stats").then((body) => {
      renderStats(body.stats);
      lastSequence = body.stats.sequence;
      connect();
      return Promise.all([loadFailures(), loadClicks(), loadTimeline(), loadMessages()]);
    });
  }).catch((error) => { if (!pageError.textContent) showError(pageError, error); });
})();
