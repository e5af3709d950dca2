// Charts drawn as inline SVG (no library, nothing fetched from elsewhere). Every
// chart comes with its figures as text beside it: a legend or a table.
"use strict";
const charts = (function () {
  const { el, svg, count } = ft;
  const COLORS = {
    pending: "#9aa5b1", notSubmitted: "#7b4ea3", awaiting: "#3d7dd8", deliveryNotConfirmed: "#e0a100",
    success: "#2e8540", failed: "#c9302c", clicks: "#111827",
  };
  const PALETTE = ["#3d7dd8", "#2e8540", "#e0a100", "#c9302c", "#7b4ea3", "#0f9d9a", "#9aa5b1", "#d45087"];

  function share(value, total) {
    return total > 0 ? ((value / total) * 100).toFixed(1) + "%" : "-";
  }

  // A stacked horizontal bar of parts [{label, value, color}] with a legend of the figures.
  function stacked(container, parts, title) {
    const total = parts.reduce((a, p) => a + p.value, 0);
    const bar = svg("svg", { viewBox: "0 0 1000 40", preserveAspectRatio: "none", role: "img", "aria-label": title, class: "bar" });
    let x = 0;
    for (const p of parts) {
      const w = total > 0 ? (p.value / total) * 1000 : 0;
      if (w > 0) bar.append(svg("rect", { x, y: 0, width: w, height: 40, fill: p.color }, svg("title", {}, p.label + ": " + count(p.value))));
      x += w;
    }
    if (total === 0) bar.append(svg("rect", { x: 0, y: 0, width: 1000, height: 40, fill: "#e5e7eb" }));
    const legend = el("ul", { class: "legend" },
      parts.map((p) => el("li", {}, el("span", { class: "swatch", style: null, "data-color": p.color }), p.label + " ",
        el("strong", {}, count(p.value)), " ", el("span", { class: "muted" }, share(p.value, total)))));
    paintSwatches(legend);
    container.replaceChildren(bar, legend);
  }

  // Swatch colours are set through the CSSOM (no inline style attribute: the CSP forbids it).
  function paintSwatches(root) {
    for (const s of root.querySelectorAll("[data-color]")) s.style.backgroundColor = s.getAttribute("data-color");
  }

  // A donut of parts [{label, value}], with a legend of the figures.
  function donut(container, parts, title) {
    const total = parts.reduce((a, p) => a + p.value, 0);
    const r = 15.915; // circumference 100
    const chart = svg("svg", { viewBox: "0 0 42 42", role: "img", "aria-label": title, class: "donut" });
    chart.append(svg("circle", { cx: 21, cy: 21, r, fill: "none", stroke: "#e5e7eb", "stroke-width": 6 }));
    let offset = 25;
    parts.forEach((p, i) => {
      const pct = total > 0 ? (p.value / total) * 100 : 0;
      if (pct <= 0) return;
      chart.append(svg("circle", {
        cx: 21, cy: 21, r, fill: "none", stroke: PALETTE[i % PALETTE.length], "stroke-width": 6,
        "stroke-dasharray": pct + " " + (100 - pct), "stroke-dashoffset": offset,
      }, svg("title", {}, p.label + ": " + count(p.value))));
      offset -= pct;
    });
    const legend = el("ul", { class: "legend" }, parts.map((p, i) => el("li", {},
      el("span", { class: "swatch", "data-color": PALETTE[i % PALETTE.length] }), p.label + " ",
      el("strong", {}, count(p.value)), " ", el("span", { class: "muted" }, share(p.value, total)))));
    paintSwatches(legend);
    container.replaceChildren(el("div", { class: "donut-box" }, chart, legend));
  }

  // Click locations on an equirectangular plot: longitude -> x, latitude -> y, with a graticule.
  function map(container, points, title) {
    const chart = svg("svg", { viewBox: "-180 -90 360 180", role: "img", "aria-label": title, class: "worldmap" });
    chart.append(svg("rect", { x: -180, y: -90, width: 360, height: 180, class: "sea" }));
    for (let lon = -150; lon <= 150; lon += 30) chart.append(svg("line", { x1: lon, y1: -90, x2: lon, y2: 90, class: lon === 0 ? "axis" : "grid" }));
    for (let lat = -60; lat <= 60; lat += 30) chart.append(svg("line", { x1: -180, y1: -lat, x2: 180, y2: -lat, class: lat === 0 ? "axis" : "grid" }));
    const seen = new Map();
    for (const p of points) {
      const key = p.lat.toFixed(2) + "," + p.lon.toFixed(2);
      const found = seen.get(key);
      if (found) found.n += 1;
      else seen.set(key, { ...p, n: 1 });
    }
    for (const p of seen.values()) {
      chart.append(svg("circle", { cx: p.lon, cy: -p.lat, r: Math.min(6, 1.2 + Math.sqrt(p.n) * 0.6), class: "point" },
        svg("title", {}, (p.label || "") + " " + count(p.n) + (p.n === 1 ? " click" : " clicks"))));
    }
    container.replaceChildren(chart);
    return seen.size;
  }

  // Stacked columns per time bucket (statuses), clicks as a line.
  function timeline(container, buckets, title) {
    const keys = [["notSubmitted", "Not submitted"], ["submitted", "Submitted"], ["deliveryNotConfirmed", "Delivery not confirmed"], ["success", "Success"], ["failed", "Failed"]];
    const color = { notSubmitted: COLORS.notSubmitted, submitted: COLORS.awaiting, deliveryNotConfirmed: COLORS.deliveryNotConfirmed, success: COLORS.success, failed: COLORS.failed };
    const n = Math.max(buckets.length, 1);
    const W = 1000, H = 220;
    const totals = buckets.map((b) => keys.reduce((a, [k]) => a + Number(b[k] || 0), 0));
    const top = Math.max(1, ...totals, ...buckets.map((b) => Number(b.clicks || 0)));
    const w = W / n;
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": title, class: "timeline" });
    buckets.forEach((b, i) => {
      let y = H;
      for (const [k, label] of keys) {
        const h = (Number(b[k] || 0) / top) * (H - 10);
        if (h <= 0) continue;
        y -= h;
        chart.append(svg("rect", { x: i * w + w * 0.1, y, width: w * 0.8, height: h, fill: color[k] }, svg("title", {}, label + ": " + count(b[k]))));
      }
    });
    if (buckets.length > 1) {
      const pts = buckets.map((b, i) => `${i * w + w / 2},${H - (Number(b.clicks || 0) / top) * (H - 10)}`).join(" ");
      chart.append(svg("polyline", { points: pts, fill: "none", stroke: COLORS.clicks, "stroke-width": 2, "vector-effect": "non-scaling-stroke" }));
    }
    const legend = el("ul", { class: "legend" }, [...keys, ["clicks", "Clicks (line)"]].map(([k, label]) =>
      el("li", {}, el("span", { class: "swatch", "data-color": color[k] || COLORS.clicks }), label)));
    paintSwatches(legend);
    container.replaceChildren(chart, legend);
  }

  return { COLORS, stacked, donut, map, timeline, share };
})();
