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

  // The tiles: [count field, label, rate field, denominator, what the rate is].
  // Each rate appears once, under the count it is a share of, with its
  // denominator in words and figures (the formula on hover). The stats have
  // three pairs of one figure under two names (delivery_rate = success_rate,
  // link_click_rate = click_through_rate, conversations_initiated = replied):
  // each pair is one tile, naming both.
  const TILES = [
    ["total", "Total", null, null, "Recipients in the audience"],
    ["submitted", "Submitted", "~submitted", "audience", "Messages that reached the flow studio"],
    ["success", "Success", "successRate", "submitted", "Success rate, also called the delivery rate"],
    ["deliveryNotConfirmed", "Delivery not confirmed", "deliveryNotConfirmedRate", "submitted", "Delivery-not-confirmed rate"],
    ["failed", "Failed", "failureRate", "submitted", "Failure rate"],
    ["notSubmitted", "Not submitted", "notSubmittedRate", "attempted", "Not-submitted rate"],
    ["pending", "Pending", "~pending", "audience", "Recipients with no event yet"],
  ];
  const ENGAGED = [
    ["read", "Read", "readRate", "submitted", "Read rate"],
    ["replied", "Replied (conversations initiated)", "replyRate", "submitted", "Reply rate: recipients with at least one reply"],
    ["uniqueHumanClickers", "Clicked a link", "linkClickRate", "submitted", "Link click rate: unique human clickers (bot clicks of link previews and scanners left out)"],
    ["buttonClickers", "Tapped a button", "buttonClickRate", "submitted", "Button click rate"],
    ["optedOut", "Opted out", "optOutRate", "submitted", "Opt-out rate"],
  ];
  const FUNNEL = [
    ["entered", "Entered flow", null, null, "Recipients that entered the flow"],
    ["inFlow", "In flow", null, null, "Entered and not yet exited"],
    ["exited", "Exited flow", null, null, "Recipients that left the flow"],
    ["goalAchieved", "Goal achieved", "goalRate", "entered", "Goal rate"],
  ];
  // The denominators, in words: [short, long].
  const DENOMINATOR = {
    audience: ["of audience", "the audience (every recipient)"],
    submitted: ["of submitted", "the submitted messages (success + failed + delivery not confirmed + awaiting)"],
    attempted: ["of audience − pending", "the recipients with any event (audience − pending)"],
    entered: ["of entered", "the recipients that entered the flow"],
  };
  // Extra counts under a tile: [tile field, stats field, words].
  const EXTRA = { replied: ["replies", "replies in all"], uniqueHumanClickers: ["humanClicks", "human clicks; bot clicks apart", "botClicks"], buttonClickers: ["buttonClicks", "taps in all"] };

  function denominatorOf(bucket, which) {
    const c = bucket.counts;
    if (which === "audience") return Number(c.total);
    if (which === "submitted") return Number(c.submitted);
    if (which === "attempted") return Number(c.total) - Number(c.pending);
    if (which === "entered") return Number(bucket.entered || 0);
    return 0;
  }

  // A rate of `bucket`: the server's field, or a share the page works out ("~field").
  function rateOf(bucket, rate, which) {
    if (rate.startsWith("~")) {
      const d = denominatorOf(bucket, which);
      return d > 0 ? Number(bucket.counts[rate.slice(1)]) / d : undefined;
    }
    return (bucket.rates || {})[rate];
  }

  function countOf(bucket, field) {
    return field in bucket.counts ? bucket.counts[field] : bucket[field];
  }

  // One tile: its count, and under it the rate with its denominator.
  function tile(bucket, [field, label, rate, which, meaning]) {
    const value = countOf(bucket, field);
    let note = null;
    let help = meaning;
    if (rate) {
      const d = denominatorOf(bucket, which);
      const [short, long] = DENOMINATOR[which];
      help = meaning + " = " + label.replace(/ \(.*\)$/, "").toLowerCase() + " / " + long + " = " + count(value) + " / " + count(d) +
        (d > 0 ? "" : " (no denominator yet: shown as -)");
      note = el("div", { class: "tile-note" }, el("span", { class: "rate", "data-rate": rate.replace("~", "") }, percent(rateOf(bucket, rate, which))),
        " ", el("span", { class: "denominator" }, short + " (" + count(d) + ")"));
    }
    if (!rate) note = el("div", { class: "tile-note" }, meaning.toLowerCase().replace(/^(\w)/, (m) => m.toUpperCase()));
    const more = EXTRA[field];
    const words = more && more[2] ? more[1].replace("bot clicks apart", count(bucket[more[2]]) + " bot clicks") : more && more[1];
    const extra = more ? el("div", { class: "tile-note extra" }, count(bucket[more[0]]) + " " + words) : null;
    return el("div", { class: "tile", "data-field": field, title: help },
      el("div", { class: "tile-label" }, label), el("div", { class: "tile-value" }, count(value)), note, extra);
  }

  let lastSequence = null;

  // The campaign's span (first to last event, ms), for the timeline's bucket.
  let span = 0;
  function noteSpan(stats) {
    if (!stats.firstEventTime) return;
    const now = new Date(stats.lastEventTime) - new Date(stats.firstEventTime);
    if (now !== span) {
      span = now;
      bucketOptions();
    }
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
    noteSpan(stats);
    const o = stats.overall;
    const c = o.counts;
    renderMeta(c.total);
    fill($("#tiles"), TILES.map((t) => tile(o, t)));
    fill($("#engagement"), ENGAGED.map((t) => tile(o, t)));
    fill($("#funnel"), FUNNEL.map((t) => tile(o, t)));
    $("#replies-count").textContent = "(" + count(o.replies) + ")";
    charts.stacked($("#status-chart"), [
      { label: "Pending", value: Number(c.pending), color: charts.COLORS.pending },
      { label: "Not submitted", value: Number(c.notSubmitted), color: charts.COLORS.notSubmitted },
      { label: "Awaiting report", value: Number(c.awaiting), color: charts.COLORS.awaiting },
      { label: "Delivery not confirmed", value: Number(c.deliveryNotConfirmed), color: charts.COLORS.deliveryNotConfirmed },
      { label: "Success", value: Number(c.success), color: charts.COLORS.success },
      { label: "Failed", value: Number(c.failed), color: charts.COLORS.failed },
    ], "Messages by status, of the audience of " + count(c.total), "of audience");
    // The bar's shares are of the audience, the tiles' rates of the submitted: say so where they differ.
    const total = Number(c.total), submitted = Number(c.submitted);
    $("#status-note").textContent = "Shares of the whole audience (" + count(total) + " recipients)." +
      (submitted > 0 && submitted !== total
        ? " The rates on the tiles are of the submitted messages (" + count(submitted) + "), so Success reads " +
          percent(o.rates.successRate) + " on its tile and " + charts.share(Number(c.success), total) + " here."
        : "");
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
      ...[...TILES, ...ENGAGED, ...FUNNEL].filter(([, , rate]) => rate && !rate.startsWith("~")).map(([, , rate, which, meaning]) =>
        [meaning.replace(/:.*$/, "") + " (" + DENOMINATOR[which][0] + ")", (b) => percent(rateOf(b, rate, which))]),
      ["Clicks", (b) => count(b.clicks)], ["Human clicks", (b) => count(b.humanClicks)], ["Bot clicks", (b) => count(b.botClicks)],
      ["Unique link clickers", (b) => count(b.uniqueClickers)], ["Unique human clickers", (b) => count(b.uniqueHumanClickers)],
      ...[...ENGAGED, ...FUNNEL].filter(([k]) => k !== "uniqueHumanClickers").map(([k, label]) => [label, (b) => count(b[k])]),
      ["Replies (every reply)", (b) => count(b.replies)], ["Button taps (every tap)", (b) => count(b.buttonClicks)],
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

  // Rows in the server's order (most clicks first), except that the rows whose
  // own place is unknown (no country, region or city, per table) come last.
  function clickRows(tbody, buckets, label, unknown, total) {
    const ordered = [...buckets.filter((b) => !unknown(b)), ...buckets.filter(unknown)];
    fill(tbody, ordered.map((b) => el("tr", { class: unknown(b) ? "unknown" : null }, el("td", {}, label(b)), el("td", { class: "num" }, count(b.clicks)),
      el("td", { class: "num" }, count(b.uniqueClickers)), el("td", { class: "num" }, charts.share(Number(b.clicks), total)))));
  }

  async function loadClicks() {
    const body = await getJSON(base + "/clicks");
    const total = Number(body.clicks);
    $("#click-totals").textContent = count(body.clicks) + " clicks by " + count(body.uniqueClickers) + " unique clickers: " +
      count(body.humanClicks) + " human (" + count(body.uniqueHumanClickers) + " unique), " + count(body.botClicks) + " bot (previews, scanners).";
    const none = (v) => v || "(unknown)";
    // "(unknown)" for a missing part; "Unknown location" when every part is missing.
    const place = (...parts) => (parts.some(Boolean) ? parts.map(none).join(" · ") : "Unknown location");
    clickRows($("#by-link tbody"), body.byLink || [], (b) => none(b.linkId), (b) => !b.linkId, total);
    clickRows($("#by-country tbody"), body.byCountry || [], (b) => place(b.countryCode), (b) => !b.countryCode, total);
    clickRows($("#by-region tbody"), body.byRegion || [], (b) => place(b.countryCode, b.region), (b) => !b.region, total);
    clickRows($("#by-city tbody"), body.byCity || [], (b) => place(b.countryCode, b.region, b.city), (b) => !b.city, total);
    const report = await getJSON(base + "/click-report");
    const points = (report.rows || []).filter((r) => r.location && r.location.latitude !== undefined && r.location.longitude !== undefined)
      .map((r) => ({ lat: Number(r.location.latitude), lon: Number(r.location.longitude), label: [r.location.city, r.location.countryCode].filter(Boolean).join(", ") }));
    const places = charts.map($("#map"), points, "Click locations: " + count(points.length) + " clicks with a location");
    const read = (report.rows || []).length;
    $("#map-note").textContent = count(points.length) + " of " + count(read) + " clicks have a location, at " + count(places) + " places" +
      (report.resumeToken && read >= 5000 ? " (the first " + count(read) + " clicks)" : "") +
      ". Land outlines: Natural Earth (public domain).";
  }

  // -- timeline: buckets of 1 min to 1 day, the finest of BUCKETS that
  // shows the campaign's span in at most 60 of them (so 30 to 60 for most spans); the server counts per minute, hour or day
  // and the page adds those up into the chosen bucket.
  const BUCKETS = [[60e3, "1 min"], [300e3, "5 min"], [600e3, "10 min"], [900e3, "15 min"], [1800e3, "30 min"], [3600e3, "1 hour"],
    [3 * 3600e3, "3 hours"], [6 * 3600e3, "6 hours"], [12 * 3600e3, "12 hours"], [86400e3, "1 day"]];
  const MOST_BUCKETS = 1500; // a finer choice over a long campaign is disabled
  function autoBucket() {
    const fit = BUCKETS.find(([ms]) => span / ms <= 60);
    return fit ? fit[0] : 86400e3;
  }
  function bucketName(ms) {
    return (BUCKETS.find(([b]) => b === ms) || [ms, ms / 60e3 + " min"])[1];
  }
  function bucketOptions() {
    const select = $("#width");
    for (const option of select.options) {
      if (option.value === "auto") option.textContent = "auto (" + bucketName(autoBucket()) + ")";
      else option.disabled = span / Number(option.value) > MOST_BUCKETS;
    }
    if (select.selectedOptions[0] && select.selectedOptions[0].disabled) select.value = "auto";
  }
  function bucketWidth() {
    const v = $("#width").value;
    return v === "auto" ? autoBucket() : Number(v);
  }
  const STATUS_SERIES = [["notSubmitted", "Not submitted", charts.COLORS.notSubmitted], ["submitted", "Submitted", charts.COLORS.awaiting],
    ["deliveryNotConfirmed", "Delivery not confirmed", charts.COLORS.deliveryNotConfirmed], ["success", "Success", charts.COLORS.success],
    ["failed", "Failed", charts.COLORS.failed]];
  const ENGAGEMENT_SERIES = [["clicks", "Link clicks", charts.COLORS.clicks], ["read", "Read", "#3d7dd8"], ["replied", "Replies", "#2e8540"],
    ["buttonClicks", "Button taps", "#e0a100"], ["optedOut", "Opted out", "#c9302c"], ["goalAchieved", "Goal achieved", "#7b4ea3"]];
  const TIMELINE_FIELDS = ["notSubmitted", "submitted", "deliveryNotConfirmed", "success", "failed", "clicks", "read", "replied",
    "buttonClicks", "optedOut", "goalAchieved"];

  // The server's buckets added up into buckets of `ms`, with the empty ones in between.
  function regroup(buckets, ms) {
    const byStart = new Map();
    for (const b of buckets) {
      const t = Math.floor(new Date(b.startTime).getTime() / ms) * ms;
      const into = byStart.get(t) || { t };
      for (const k of TIMELINE_FIELDS) into[k] = (into[k] || 0) + Number(b[k] || 0);
      byStart.set(t, into);
    }
    const starts = [...byStart.keys()].sort((a, b) => a - b);
    if (starts.length < 2 || (starts[starts.length - 1] - starts[0]) / ms > 2 * MOST_BUCKETS) return starts.map((t) => byStart.get(t));
    const out = [];
    for (let t = starts[0]; t <= starts[starts.length - 1]; t += ms) out.push(byStart.get(t) || { t });
    return out;
  }

  // The charts are drawn at their width in pixels (text stays readable): a
  // window whose width changes much draws them again.
  let drawn = null;
  let drawnWidth = 0;
  function drawTimeline() {
    if (!drawn) return;
    const { shown, ms, per } = drawn;
    drawnWidth = $("#timeline-chart").clientWidth;
    charts.timeChart($("#timeline-chart"), shown, { series: STATUS_SERIES, stacked: true, step: ms,
      yLabel: "status events per " + per, title: "Status events per " + per });
    charts.timeChart($("#engagement-chart"), shown, { series: ENGAGEMENT_SERIES, stacked: false, step: ms,
      yLabel: "events per " + per, title: "Clicks and engagement events per " + per });
  }
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      const now = $("#timeline-chart").clientWidth;
      if (Math.abs(now - drawnWidth) > drawnWidth * 0.1) drawTimeline();
    }, 200);
  });

  async function loadTimeline() {
    const ms = bucketWidth();
    const width = ms < 3600e3 ? "minute" : ms < 86400e3 ? "hour" : "day";
    const body = await getJSON(base + "/timeline?width=" + width);
    const shown = regroup(body.buckets || [], ms);
    const per = bucketName(ms);
    drawn = { shown, ms, per };
    drawTimeline();
    $("#timeline-note").textContent = shown.length
      ? count(shown.length) + " buckets of " + per + ", from " + when(new Date(shown[0].t).toISOString()) + " to " +
        when(new Date(shown[shown.length - 1].t + ms).toISOString()) + " UTC. Each bar counts the status events that " +
        "happened in it (a message reports several: submitted, then success or failed), by the engine's clock; " +
        "clicks and engagement have their own chart and scale."
      : "No events yet.";
    fill($("#timeline-table tbody"), shown.filter((b) => TIMELINE_FIELDS.some((k) => b[k])).map((b) =>
      el("tr", {}, el("td", {}, when(new Date(b.t).toISOString())), TIMELINE_FIELDS.map((k) => el("td", { class: "num" }, count(b[k]))))));
  }

  // -- message report: the server pages it; we keep the tokens of the pages seen.
  const form = $("#message-filters");
  let tokens = [""];
  let page = 0;

  // The report's engaged segments (MessageFilter): "" any, "true" did, "false" did not.
  const ENGAGEMENT_FILTERS = ["read", "replied", "opted_out", "clicked_link", "clicked_button", "reached_goal"];

  // What a recipient did, in a few words (the message row's engagement times and counts).
  function engagedWords(r) {
    const n = (v) => Number(v || 0);
    return [r.readTime && "read", n(r.replies) && (n(r.replies) > 1 ? "replied ×" + n(r.replies) : "replied"),
      n(r.clicks) && "clicked a link", n(r.buttonClicks) && "tapped a button", r.optedOutTime && "opted out",
      r.goalTime && "reached the goal"].filter(Boolean).join(", ");
  }

  function filterParams() {
    const data = new FormData(form);
    const params = new URLSearchParams();
    for (const s of data.getAll("status")) params.append("status", String(s));
    for (const k of ["channel", "variant", "recipient", "failure_code", ...ENGAGEMENT_FILTERS]) {
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
        el("td", {}, when(r.submittedTime)), el("td", {}, when(r.updateTime)), el("td", { class: "num" }, count(r.clicks)),
        el("td", {}, engagedWords(r)))));
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

  // -- replies (StreamReplies): paged by the server, oldest first; the page
  // shown is read again after every change, so a new reply appears by itself.
  const replyForm = $("#reply-filters");
  let replyTokens = [""];
  let replyPage = 0;
  let repliesLoading = null;
  async function loadReplies() {
    const data = new FormData(replyForm);
    const params = new URLSearchParams({ page_size: String(data.get("page_size") || "50") });
    const recipient = String(data.get("recipient") || "").trim();
    if (recipient) params.set("recipient", recipient);
    if (replyTokens[replyPage]) params.set("resume_token", replyTokens[replyPage]);
    const box = $("#replies-error");
    try {
      const body = await getJSON(base + "/replies?" + params);
      showError(box, null);
      const rows = body.rows || [];
      fill($("#reply-table tbody"), rows.map((r) => el("tr", { "data-sequence": r.sequence },
        el("td", {}, when(r.occurredAt)), el("td", {}, r.recipient),
        el("td", { class: r.text ? "reply" : "muted" }, r.text || "(no text kept)"))));
      const size = Number(params.get("page_size"));
      replyTokens[replyPage + 1] = rows.length >= size ? body.resumeToken : "";
      $("#replies-empty").hidden = rows.length > 0 || replyPage > 0;
      $("#replies-next").disabled = !replyTokens[replyPage + 1];
      $("#replies-prev").disabled = replyPage === 0;
      $("#replies-page").textContent = "Page " + count(replyPage + 1) + " · " + count(rows.length) + " replies";
    } catch (error) {
      showError(box, error);
    }
  }
  // One read at a time; a change during a read reads again after it.
  let repliesAgain = false;
  function refreshReplies() {
    if (repliesLoading) {
      repliesAgain = true;
      return repliesLoading;
    }
    repliesLoading = loadReplies().finally(() => {
      repliesLoading = null;
      if (repliesAgain) {
        repliesAgain = false;
        refreshReplies();
      }
    });
    return repliesLoading;
  }
  replyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    replyTokens = [""];
    replyPage = 0;
    refreshReplies();
  });
  $("#replies-next").addEventListener("click", () => { replyPage += 1; refreshReplies(); });
  $("#replies-prev").addEventListener("click", () => { replyPage = Math.max(0, replyPage - 1); refreshReplies(); });

  // -- the Messages and Replies tabs (arrow keys move between them).
  const TABS = [["#tab-messages", "#panel-messages"], ["#tab-replies", "#replies"]];
  function showTab(which) {
    TABS.forEach(([tab, panel], i) => {
      const on = i === which;
      $(tab).setAttribute("aria-selected", String(on));
      $(tab).tabIndex = on ? 0 : -1;
      $(panel).hidden = !on;
    });
  }
  TABS.forEach(([tab], i) => {
    $(tab).addEventListener("click", () => showTab(i));
    $(tab).addEventListener("keydown", (event) => {
      if (event.key !== "ArrowRight" && event.key !== "ArrowLeft") return;
      const next = (i + (event.key === "ArrowRight" ? 1 : TABS.length - 1)) % TABS.length;
      showTab(next);
      $(TABS[next][0]).focus();
    });
  });
  function tabFromHash() {
    if (location.hash === "#replies") showTab(1);
    else if (location.hash === "#messages") showTab(0);
  }
  window.addEventListener("hashchange", tabFromHash);
  tabFromHash();

  // -- live: stats from the server-sent events; the other sections follow at most every 2 s.
  let detailsTimer = null;
  function refreshDetails() {
    if (detailsTimer !== null) return;
    detailsTimer = setTimeout(() => {
      detailsTimer = null;
      Promise.all([loadFailures(), loadClicks(), loadTimeline(), refreshReplies()]).catch((e) => showError(pageError, e));
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
      return Promise.all([loadFailures(), loadClicks(), loadTimeline(), loadMessages(), refreshReplies()]);
    });
  }).catch((error) => { if (!pageError.textContent) showError(pageError, error); });
})();
