// The demo page's publishing form: the smallest editor console. Served as a file so that
// the page runs under a strict Content-Security-Policy (no inline script).
'use strict';
(() => {
  const form = document.getElementById('publish');
  const result = document.getElementById('result');
  const retract = document.getElementById('retract');
  const channel = form.dataset.channel;
  let last = null;

  const say = (text, error) => {
    result.textContent = text;
    result.classList.toggle('error', !!error);
  };
  const headers = json => {
    const h = { Authorization: 'Bearer ' + form.key.value.trim() };
    if (json) h['Content-Type'] = 'application/json';
    return h;
  };
  const problem = async r => {
    try {
      const p = await r.json();
      const fields = (p.errors || []).map(e => e.message).join(' ');
      return fields || p.detail || r.statusText;
    } catch (e) {
      return r.status + ' ' + r.statusText;
    }
  };

  form.addEventListener('submit', async event => {
    event.preventDefault();
    if (!form.key.value.trim()) return say('Enter an API key first.', true);
    const body = { text: form.text.value, urgency: Number(form.urgency.value), pinned: form.pinned.checked };
    if (form.url.value.trim()) body.url = form.url.value.trim();
    try {
      const r = await fetch('/v1/channels/' + encodeURIComponent(channel) + '/briefs', {
        method: 'POST', headers: { ...headers(true), 'Idempotency-Key': crypto.randomUUID() },
        body: JSON.stringify(body),
      });
      if (!r.ok) return say('Not published: ' + await problem(r), true);
      last = await r.json();
      retract.disabled = false;
      form.text.value = '';
      say('Published ' + last.id + '.');
    } catch (e) {
      say('Not published: the server cannot be reached.', true);
    }
  });

  retract.addEventListener('click', async () => {
    if (!last) return;
    try {
      const r = await fetch('/v1/channels/' + encodeURIComponent(channel) + '/briefs/' + last.id, {
        method: 'DELETE', headers: headers(false),
      });
      if (!r.ok) return say('Not retracted: ' + await problem(r), true);
      say('Retracted ' + last.id + '.');
      last = null;
      retract.disabled = true;
    } catch (e) {
      say('Not retracted: the server cannot be reached.', true);
    }
  });
})();
