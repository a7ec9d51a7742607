// Ferry dashboard: lifecycle actions. A form with `data-api` is sent as
// JSON to that REST endpoint (the same endpoints, RBAC and audit as the
// CLI) after the confirmation dialog, with the session's CSRF token in
// X-CSRF-Token. `{field}` in data-api, data-confirm and data-done is the
// form field's value. Everything else is plain HTML and htmx.
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

  function body(form) {
    var out = {};
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name || el.name.charAt(0) === '_') return;
      out[el.name] = el.dataset.json === 'number' ? Number(el.value) : el.value;
    });
    return JSON.stringify(out);
  }

  async function send(form) {
    if (!(await confirmed(fill(form.dataset.confirm || 'Are you sure?', form)))) {
      say('Cancelled; nothing was changed.', true);
      return;
    }
    var res;
    try {
      res = await fetch(fill(form.dataset.api, form), {
        method: form.dataset.method || 'POST',
        headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf() },
        body: body(form),
        credentials: 'same-origin'
      });
    } catch (e) {
      say('The server could not be reached.', false);
      return;
    }
    var answer = await res.json().catch(function () { return {}; });
    if (!res.ok) {
      say(answer.error || ('Refused (HTTP ' + res.status + ').'), false);
      return;
    }
    say(fill(form.dataset.done || 'Done.', form), true);
    var target = form.dataset.refresh;
    if (target && window.htmx) {
      window.htmx.ajax('GET', window.location.pathname + window.location.search, {
        target: target, select: target, swap: 'outerHTML'
      });
    }
  }

  document.addEventListener('submit', function (ev) {
    var form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.dataset.api) return;
    ev.preventDefault();
    send(form);
  });
})();
