// Ferry dashboard: the monitoring page's charts. Draws one uPlot chart per
// `.plot[data-metric]` from the JSON the server embedded
// (#monitoring-data, the same shape as GET /api/v1/models/{name}/monitoring),
// one line per version and variant. When the change feed says this model's
// roll-ups moved (dashboard.js dispatches `ferry:telemetry` on the body),
// it fetches the data again and redraws, at most every 2 s.
(function () {
  'use strict';
  var root = document.getElementById('monitoring');
  var dataEl = document.getElementById('monitoring-data');
  if (!root || !dataEl || !window.uPlot) return;

  var COLORS = ['#1f5fbf', '#c2410c', '#15803d', '#7e22ce', '#0e7490', '#a16207'];
  var charts = [];

  function name(s) { return 'v' + s.version + ' ' + s.variant; }

  // Points drawn too: a bucket between two without data (a device that
  // just started, one back from offline) is a point, not an invisible
  // line of length zero.
  var POINTS = { show: true, size: 4 };

  // [x, y1, y2, ...] and uPlot series options for one metric.
  function columns(m, metric) {
    var x = m.buckets.map(function (b) { return b / 1000; });
    var data = [x];
    var series = [{}];
    m.series.forEach(function (s, i) {
      var color = COLORS[i % COLORS.length];
      if (metric === 'latency') {
        data.push(s.latency_p50_us.map(function (v) { return v == null ? null : v / 1000; }));
        series.push({ label: name(s) + ' p50', stroke: color, width: 1.5, points: POINTS });
        data.push(s.latency_p99_us.map(function (v) { return v == null ? null : v / 1000; }));
        series.push({ label: name(s) + ' p99', stroke: color, width: 1.5, dash: [6, 4], points: POINTS });
      } else {
        data.push(s[metric]);
        series.push({ label: name(s), stroke: color, width: 1.5, points: POINTS });
      }
    });
    if (metric === 'max_psi') {
      data.push(x.map(function () { return m.psi_threshold; }));
      series.push({ label: 'threshold', stroke: '#b91c1c', width: 1, dash: [2, 4] });
    }
    return { data: data, series: series };
  }

  function width(el) { return Math.max(280, el.clientWidth || 480); }

  function draw(m) {
    charts.forEach(function (c) { c.plot.destroy(); });
    charts = [];
    if (!m.series.length) return;
    root.querySelectorAll('.plot[data-metric]').forEach(function (el) {
      var c = columns(m, el.dataset.metric);
      var plot = new window.uPlot({
        width: width(el),
        height: 200,
        series: c.series,
        axes: [{}, { size: 60 }],
        legend: { live: false }
      }, c.data, el);
      charts.push({ el: el, plot: plot });
    });
  }

  var current = JSON.parse(dataEl.textContent);
  draw(current);

  window.addEventListener('resize', function () {
    charts.forEach(function (c) { c.plot.setSize({ width: width(c.el), height: 200 }); });
  });

  var pending = false;
  var last = 0;
  function refresh() {
    if (pending) return;
    var wait = Math.max(0, last + 2000 - Date.now());
    pending = true;
    setTimeout(function () {
      last = Date.now();
      var params = new URLSearchParams(window.location.search);
      var url = '/api/v1/models/' + encodeURIComponent(root.dataset.model) + '/monitoring?' + params.toString();
      fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (m) {
          pending = false;
          if (!m) return;
          var had = current.series.length;
          current = m;
          if (had === 0 && m.series.length > 0) {
            window.location.reload();
            return;
          }
          draw(m);
          if (window.htmx) {
            window.htmx.ajax('GET', window.location.pathname + window.location.search, {
              target: '#monitoring-tables', select: '#monitoring-tables', swap: 'outerHTML'
            });
          }
        })
        .catch(function () { pending = false; });
    }, wait);
  }

  document.body.addEventListener('ferry:telemetry', function (ev) {
    if (!ev.detail || ev.detail === root.dataset.model) refresh();
  });
})();
