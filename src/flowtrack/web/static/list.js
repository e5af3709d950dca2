// The campaign list: ListCampaigns, with each campaign's stats (success rate, last event).
"use strict";
(function () {
  const { count, percent, when, stateName, getJSON, el, showError, campaignPath } = ft;
  const form = document.getElementById("filters");
  const tbody = document.querySelector("#campaigns tbody");
  const more = document.getElementById("more");
  const errorBox = document.getElementById("list-error");
  let nextToken = "";
  // The filter of the pages shown: "More" continues it even if the form was edited since.
  let shownFilter = "";
  let loading = false;
  // Each load of page 1 supersedes the ones before it: an answer that comes
  // back after a later filter was submitted is dropped, not shown over it.
  let generation = 0;

  function filterText() {
    const data = new FormData(form);
    const terms = [];
    if (data.get("state")) terms.push("state=" + data.get("state"));
    const label = String(data.get("label") || "").trim().replace(/^labels\./, "");
    if (label) terms.push("labels." + label);
    const name = String(data.get("name") || "").trim();
    if (name) terms.push("name:" + name.replace(/\s+/g, ""));
    return terms.join(" ");
  }

  function row(campaign) {
    const id = campaign.id;
    const link = el("a", { href: campaignPath(id, "/campaigns/") }, campaign.name || id);
    const labels = Object.entries(campaign.labels || {}).map(([k, v]) => k + "=" + v).join(" ");
    const cells = {
      submitted: el("td", { class: "num" }, "…"),
      rate: el("td", { class: "num" }, "…"),
      last: el("td", {}, "…"),
    };
    const tr = el(
      "tr",
      { "data-campaign": id },
      el("th", { scope: "row" }, link, campaign.name && campaign.name !== id ? el("div", { class: "muted" }, id) : null),
      el("td", {}, el("span", { class: "state state-" + stateName(campaign.state).toLowerCase() }, stateName(campaign.state))),
      el("td", { class: "num" }, count(campaign.recipientCount)),
      cells.submitted,
      cells.rate,
      cells.last,
      el("td", {}, labels)
    );
    getJSON(campaignPath(id) + "/stats")
      .then((body) => {
        const s = body.stats;
        cells.submitted.textContent = count(s.overall.counts.submitted);
        cells.rate.textContent = percent(s.overall.rates.successRate);
        cells.last.textContent = when(s.lastEventTime) || "no events yet";
      })
      .catch(() => {
        cells.submitted.textContent = cells.rate.textContent = cells.last.textContent = "-";
      });
    return tr;
  }

  // append: the next page of the list shown (nothing to do without one); else page 1 of the form's filter.
  async function load(append) {
    if (append && (!nextToken || loading)) return;
    showError(errorBox, null);
    const filter = append ? shownFilter : filterText();
    const mine = append ? generation : ++generation;
    const params = new URLSearchParams({ filter: filter, page_size: "50" });
    if (append) params.set("page_token", nextToken);
    loading = true;
    more.disabled = true;
    try {
      const body = await getJSON("/api/campaigns?" + params);
      if (mine !== generation) return;
      const rows = (body.campaigns || []).map(row);
      if (append) tbody.append(...rows);
      else tbody.replaceChildren(...rows);
      shownFilter = filter;
      // The filter whose answer the table shows (tests wait for it).
      tbody.dataset.filter = filter;
      nextToken = body.nextPageToken || "";
      more.hidden = !nextToken;
      document.getElementById("empty").hidden = tbody.children.length > 0;
    } catch (error) {
      if (mine === generation) showError(errorBox, error);
    } finally {
      if (mine === generation) {
        loading = false;
        more.disabled = false;
      }
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load(false);
  });
  more.addEventListener("click", () => load(true));
  load(false);
})();
