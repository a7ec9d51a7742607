// Ferry dashboard: lifecycle actions. A form with `data-api` is sent as
// JSON to that REST endpoint (the same endpoints, RBAC and audit as the
// CLI) after the confirmation dialog, with the session's CSRF token in
// X-CSRF-Token. `{field}` in data-api, data-confirm and data-done is the
// form field's value. A form with `data-upload` sends its file field's
// bytes instead (a signed bundle: the same endpoint `ferry model push`
// streams to). Live updates from the change feed (below). Everything else
// is plain HTML and htmx.
(function () {
  'use strict';

  function csrf() {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.content : '';
  }

  function fill(text, form) {
    return text.replace(/\{(\w+)\}/g, function (_, k) {
      var el = form.elements.namedItem(k);
      return el ? el.value : '';
    });
  }

  function say(text, ok) {
    var s = document.getElementById('status');
    if (!s) return;
    s.textContent = text;
    s.className = ok ? 'status ok' : 'status error';
  }

  // Resolves true when the person confirms (the dialog's Confirm button).
  function confirmed(message) {
    var dialog = document.getElementById('confirm');
    if (!dialog || typeof dialog.showModal !== 'function') {
      return Promise.resolve(window.confirm(message));
    }
    dialog.querySelector('[data-message]').textContent = message;
    dialog.returnValue = '';
    return new Promise(function (resolve) {
      dialog.addEventListener('close', function () {
        resolve(dialog.returnValue === 'confirm');
      }, { once: true });
      dialog.showModal();
    });
  }

  // A field's JSON value by its `data-json` type; `undefined` leaves the
  // field out of the body (the server keeps or defaults it).
  //   number: a number; empty: left out (the server's default)
  //   bool:   a checkbox, true or false
  //   list:   comma-separated strings, blanks dropped
  //   map:    `key=number` lines as an object; empty: null
  //   opt:    a string; empty: null (clears it)
  //   keep:   a string; empty: left out (a write-only secret kept)
  //   clear:  a checkbox; checked: "" (clears a write-only value)
  function value(el) {
    var v = el.value.trim();
    switch (el.dataset.json) {
      case 'number': return v === '' ? undefined : Number(v);
      case 'bool': return el.checked;
      case 'list': return v.split(',').map(function (x) { return x.trim(); }).filter(Boolean);
      case 'map':
        if (v === '') return null;
        var m = {};
        v.split('\n').forEach(function (line) {
          // No `=`: NaN, sent as null, which the server refuses.
          var at = line.lastIndexOf('=');
          if (!line.trim()) return;
          m[(at < 0 ? line : line.slice(0, at)).trim()] = at < 0 ? NaN : Number(line.slice(at + 1).trim());
        });
        return m;
      case 'opt': return v === '' ? null : v;
      case 'keep': return v === '' ? undefined : el.value;
      case 'clear': return el.checked ? '' : undefined;
      default: return el.value;
    }
  }

  // The form as one JSON object; of two fields of one name the first
  // that has a value wins (a new secret over "clear the secret").
  function body(form) {
    var out = {};
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name || el.name.charAt(0) === '_' || out[el.name] !== undefined) return;
      var v = value(el);
      if (v !== undefined) out[el.name] = v;
    });
    return JSON.stringify(out);
  }

  // After a change: the status, then either a new page (`data-next`, the
  // status carried over in sessionStorage) or the part `data-refresh`
  // names fetched again.
  function done(form, message) {
    if (form.dataset.next) {
      try { sessionStorage.setItem('ferry-status', message); } catch (e) { /* private mode */ }
      window.location.assign(form.dataset.next);
      return;
    }
    say(message, true);
    var target = form.dataset.refresh;
    if (target && window.htmx) {
      window.htmx.ajax('GET', window.location.pathname + window.location.search, {
        target: target, select: target, swap: 'outerHTML'
      });
    }
  }

  // Live updates. A page element that shows something the change feed
  // names carries data-live="rollout alert …"; the page then listens to
  // /ui/events and re-dispatches each event on the body as `ferry:<topic>`
  // (detail: the id), which htmx elements trigger on
  // (hx-trigger="ferry:rollout from:body") and page scripts listen to.
  // Per topic at most one dispatch per 300 ms, and always one after the
  // last event, so a busy rollout neither floods the server nor leaves the
  // page showing a state older than the last change.
  function live() {
    var topics = {};
    document.querySelectorAll('[data-live]').forEach(function (el) {
      el.dataset.live.split(/\s+/).forEach(function (t) { if (t) topics[t] = true; });
    });
    var names = Object.keys(topics);
    if (!names.length || !window.EventSource) return;
    var source = new EventSource('/ui/events');
    names.concat(['resync']).forEach(function (topic) {
      var timer = null;
      var dirty = null;
      function fire(detail) {
        document.body.dispatchEvent(new CustomEvent('ferry:' + topic, { detail: detail }));
        timer = setTimeout(function () {
          timer = null;
          if (dirty !== null) { var d = dirty; dirty = null; fire(d); }
        }, 300);
      }
      source.addEventListener(topic, function (ev) {
        if (timer) { dirty = ev.data; } else { fire(ev.data); }
      });
    });
    // Fell behind the feed: everything live is stale.
    document.body.addEventListener('ferry:resync', function () {
      names.forEach(function (t) {
        document.body.dispatchEvent(new CustomEvent('ferry:' + t, { detail: '' }));
      });
    });
    window.addEventListener('pagehide', function () { source.close(); });
  }
  live();

  // The request, and the server's answer: its refusal message shown.
  async function call(url, init) {
    var res;
    try {
      res = await fetch(url, init);
    } catch (e) {
      say('The server could not be reached.', false);
      return null;
    }
    var answer = await res.json().catch(function () { return {}; });
    if (!res.ok) {
      say(answer.error || ('Refused (HTTP ' + res.status + ').'), false);
      return null;
    }
    return answer;
  }

  // A signed bundle from the file field, as `ferry model push` sends it.
  async function upload(form) {
    var file = form.querySelector('input[type="file"]').files[0];
    if (!file) {
      say('Choose a signed bundle (.ferry) first.', false);
      return;
    }
    if (!(await confirmed('Upload and register ' + file.name + '? The server verifies its signature first.'))) {
      say('Cancelled; nothing was changed.', true);
      return;
    }
    say('Uploading ' + file.name + '…', true);
    var r = await call(form.dataset.upload, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream', 'X-CSRF-Token': csrf() },
      body: file,
      credentials: 'same-origin'
    });
    if (!r) return;
    form.reset();
    done(form, 'Registered ' + r.model + ' version ' + r.version + ' (' + r.status + ').');
  }

  async function send(form) {
    if (!(await confirmed(fill(form.dataset.confirm || 'Are you sure?', form)))) {
      say('Cancelled; nothing was changed.', true);
      return;
    }
    var r = await call(fill(form.dataset.api, form), {
      method: form.dataset.method || 'POST',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf() },
      body: body(form),
      credentials: 'same-origin'
    });
    if (r) done(form, fill(form.dataset.done || 'Done.', form));
  }

  document.addEventListener('submit', function (ev) {
    var form = ev.target;
    if (!(form instanceof HTMLFormElement)) return;
    if (form.dataset.upload) {
      ev.preventDefault();
      upload(form);
    } else if (form.dataset.api) {
      ev.preventDefault();
      send(form);
    }
  });

  // The status a change left before it moved to this page.
  document.addEventListener('DOMContentLoaded', function () {
    var carried = null;
    try {
      carried = sessionStorage.getItem('ferry-status');
      sessionStorage.removeItem('ferry-status');
    } catch (e) { /* private mode */ }
    if (carried) say(carried, true);
  });
})();
