// Shared helpers of the flowtrack pages: formatting as the CLI prints, JSON fetches, DOM building.
"use strict";
const ft = (function () {
  // Integers with thousands separators (2,000); proto3 JSON sends int64 as strings.
  function count(value) {
    const n = Number(value || 0);
    return n.toLocaleString("en-US");
  }
  // A rate (0..1) as the CLI prints it: one decimal and %, "-" when absent.
  function percent(value) {
    if (value === undefined || value === null || value === "") return "-";
    return (Number(value) * 100).toFixed(1) + "%";
  }
  // A proto3 JSON Timestamp ("2026-12-01T22:00:00Z") as "YYYY-MM-DD HH:MM:SS" (UTC), "" when absent.
  function when(value) {
    if (!value) return "";
    const d = new Date(value);
    if (isNaN(d.getTime())) return String(value);
    return d.toISOString().slice(0, 19).replace("T", " ");
  }
  const STATUS = {
    MESSAGE_STATUS_NOT_SUBMITTED: "Not submitted",
    MESSAGE_STATUS_SUBMITTED: "Submitted",
    MESSAGE_STATUS_DELIVERY_NOT_CONFIRMED: "Delivery not confirmed",
    MESSAGE_STATUS_SUCCESS: "Success",
    MESSAGE_STATUS_FAILED: "Failed",
    MESSAGE_STATUS_PENDING: "Pending",
  };
  function statusName(value) {
    return STATUS[value] || String(value || "").replace(/^MESSAGE_STATUS_/, "");
  }
  function stateName(value) {
    return String(value || "").replace(/^CAMPAIGN_STATE_/, "");
  }
  // An error answer: an application/problem+json document (detail, code, reason, violations).
  class ApiError extends Error {
    constructor(status, body) {
      const p = body || {};
      super(p.detail || "HTTP " + status);
      this.status = status;
      this.code = p.code || "";
      this.reason = p.reason || "";
    }
  }
  // The sign-in page, which brings the user back here afterwards.
  function signIn(reason) {
    const here = location.pathname + location.search;
    const query = new URLSearchParams({ error: reason });
    if (here !== "/") query.set("next", here);
    location.href = "/signin?" + query;
  }
  // The URL path of one campaign's JSON (or page, with prefix "/campaigns/"): any id, '/' included, is one segment.
  function campaignPath(id, prefix) {
    return (prefix || "/api/campaigns/") + encodeURIComponent(id);
  }
  async function getJSON(url) {
    const response = await fetch(url, { headers: { accept: "application/json" }, credentials: "same-origin" });
    if (response.status === 401) {
      signIn("SESSION_EXPIRED");
      throw new ApiError(401, null);
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }
  // el("td", {class: "num"}, "2,000") -> <td class="num">2,000</td>; children may be nodes or text.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    for (const child of children.flat()) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function fill(tbody, rows) {
    tbody.replaceChildren(...rows);
  }
  function showError(box, error) {
    box.textContent = error ? String(error.message || error) : "";
    box.hidden = !error;
  }
  return { count, percent, when, statusName, stateName, getJSON, el, svg, fill, showError, ApiError, signIn, campaignPath };
})();
