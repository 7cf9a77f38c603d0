// The editor console (docs/console.md): sign in with an API key, compose, preview and
// publish briefs, and correct, retract, pin and read the history of the channel's briefs
// live. Plain modern JavaScript, no build step, served as a file so that the page runs
// under a strict Content-Security-Policy (no inline script or style).
//
// The API key is kept only in the variable `session` below: never in localStorage,
// sessionStorage, a cookie or a URL, and sent only to this page's own origin. A reload
// signs out; drafts (which hold no secret) stay in localStorage until published or
// discarded (docs/security.md, "The editor console").
'use strict';
(() => {
  const $ = id => document.getElementById(id);
  const MAX_TEXT = 500;
  const MAX_TAGS = 10;
  const CHANNEL_RE = /^[a-z0-9][a-z0-9-]{0,63}$/;
  const DRAFTS = 'ticker.console.drafts'; // {channel: draft}: never the API key
  const PREFS = 'ticker.console.prefs'; // {channel, previewLang, previewTz}
  const READERS_EVERY_MS = 10000;
  const WRITE = ['publish', 'correct', 'retract', 'pin'];

  let session = null; // {key, self}: in memory only
  let channel = null;
  // The channel's language and time zone, which the widget and /embed use unless a page
  // says otherwise: the preview shows them, as readers will see the brief.
  let defaults = {};
  let busy = false; // a publish is under way: a second click waits for it, never re-sends
  let readersTimer = 0;
  const briefs = new Map(); // id -> brief, the channel's live briefs
  const items = new Map(); // id -> li

  // Storage that may be missing (a private window, storage off): the console still works.
  const load = (name, fallback) => {
    try { return JSON.parse(localStorage.getItem(name)) || fallback; } catch (e) { return fallback; }
  };
  const store = (name, value) => {
    try { localStorage.setItem(name, JSON.stringify(value)); } catch (e) { /* not kept */ }
  };
  const prefs = load(PREFS, {});

  const say = (el, text, kind) => {
    el.textContent = text;
    el.classList.toggle('error', kind === 'error');
    el.classList.toggle('ok', kind === 'ok');
  };
  const node = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const uuid = () => (crypto.randomUUID ? crypto.randomUUID()
    : Array.from(crypto.getRandomValues(new Uint8Array(16)), b => b.toString(16).padStart(2, '0')).join(''));

  // ---- HTTP: the public API, with the key in memory ----------------------------------

  class Failure extends Error {
    constructor(message, status, type) { super(message); this.status = status; this.type = type; }
  }

  // A sentence for a failed answer: the field errors, else the problem's detail.
  const explain = async r => {
    try {
      const p = await r.json();
      const fields = (p.errors || []).map(e => e.message).join(' ');
      return new Failure(fields || p.detail || `${r.status} ${r.statusText}`, r.status, p.type || '');
    } catch (e) {
      return new Failure(`The server answered ${r.status} ${r.statusText}.`, r.status, '');
    }
  };

  const api = async (method, path, { body, headers = {}, key } = {}) => {
    const h = { ...headers };
    const secret = key || (session && session.key);
    if (secret) h.Authorization = 'Bearer ' + secret;
    if (body !== undefined) h['Content-Type'] = 'application/json';
    let r;
    try {
      r = await fetch(path, {
        method, headers: h, body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer',
      });
    } catch (e) {
      throw new Failure('The server cannot be reached: check the connection, then try again.', 0, 'network');
    }
    if (!r.ok) {
      const failure = await explain(r);
      if (r.status === 401 && session && !key) signOut(failure.message); // revoked or expired meanwhile
      throw failure;
    }
    return r.status === 204 ? null : r.json();
  };

  // ---- Sign in and out ------------------------------------------------------------------

  const signinStatus = $('signin-status');

  $('signin-form').addEventListener('submit', async event => {
    event.preventDefault();
    const key = $('key').value.trim();
    if (!key) { say(signinStatus, 'Enter an API key first.', 'error'); $('key').focus(); return; }
    say(signinStatus, 'Checking the key…');
    let self;
    try {
      self = await api('GET', '/v1/keys/self', { key });
    } catch (e) {
      say(signinStatus, 'Not signed in: ' + e.message, 'error');
      $('key').select();
      return;
    }
    if (!WRITE.some(a => self.actions.includes(a))) {
      say(signinStatus, `Not signed in: API key '${self.name}' is a ${self.role} key, which cannot publish. Sign in with a publisher or admin key.`, 'error');
      $('key').select();
      return;
    }
    $('key').value = ''; // out of the DOM: only the variable keeps it
    session = { key, self };
    say(signinStatus, '');
    await enter();
  });

  $('signout').addEventListener('click', () => signOut('Signed out. Your drafts are kept on this device.'));

  function signOut(message) {
    session = null;
    clearInterval(readersTimer);
    closeSocket();
    $('desk').hidden = true;
    $('who').hidden = true;
    $('signout').hidden = true;
    $('signin').hidden = false;
    for (const d of document.querySelectorAll('dialog[open]')) d.close();
    say(signinStatus, message, message.startsWith('Signed out') ? 'ok' : 'error');
    $('key').focus();
  }

  const everywhere = () => session.self.channels.includes('*');

  async function enter() {
    const self = session.self;
    const scope = everywhere() ? 'every channel' : self.channels.join(', ');
    let who = `Signed in as ${self.name} (${self.role} key for ${scope})`;
    if (self.valid_until) who += `; this old secret stops working at ${new Date(self.valid_until).toLocaleString()}`;
    else if (self.expires_at) who += `; it expires at ${new Date(self.expires_at).toLocaleString()}`;
    $('who').textContent = who + '.';
    $('who').hidden = false;
    $('signout').hidden = false;
    $('signin').hidden = true;
    $('desk').hidden = false;
    $('other').hidden = !everywhere();
    await refreshChannels();
    readersTimer = setInterval(refreshChannels, READERS_EVERY_MS);
    openSocket();
    $('text').focus();
  }

  // ---- Channels ---------------------------------------------------------------------------

  const select = $('channel');
  let readers = new Map();

  async function refreshChannels() {
    try {
      const list = await api('GET', '/v1/channels');
      readers = new Map(list.channels.map(c => [c.name, c.readers]));
    } catch (e) { /* the counts stay as they were; the live status says when it is down */ }
    if (!session) return;
    const names = everywhere()
      ? [...new Set([...readers.keys(), ...(channel ? [channel] : [])])].sort()
      : [...session.self.channels].sort();
    const wanted = channel && names.includes(channel) ? channel
      : names.includes(prefs.channel) ? prefs.channel : names[0] || null;
    const same = select.options.length === names.length && names.every((n, i) => select.options[i].value === n);
    if (!same) select.replaceChildren(...names.map(n => new Option(n, n)));
    for (const o of select.options) {
      const n = readers.get(o.value) || 0;
      o.textContent = `${o.value} (${n} ${n === 1 ? 'reader' : 'readers'})`;
    }
    if (!names.length) {
      $('readers').textContent = 'No channel yet: type the name of a new channel and open it.';
    }
    if (wanted !== channel) switchTo(wanted);
    else if (wanted) select.value = wanted;
    showReaders();
  }

  const showReaders = () => {
    if (!channel) return;
    const n = readers.get(channel) || 0;
    $('readers').textContent = `${n} ${n === 1 ? 'reader is' : 'readers are'} following ${channel} live.`;
  };

  select.addEventListener('change', () => switchTo(select.value));

  $('other').addEventListener('submit', event => {
    event.preventDefault();
    const name = $('other-channel').value.trim();
    if (!CHANNEL_RE.test(name)) {
      say($('action-status'), `'${name}' is not a channel name: use 1 to 64 lowercase letters, digits and hyphens, starting with a letter or digit.`, 'error');
      $('other-channel').focus();
      return;
    }
    if (![...select.options].some(o => o.value === name)) select.add(new Option(`${name} (0 readers)`, name));
    $('other-channel').value = '';
    switchTo(name);
    $('text').focus();
  });

  async function loadDefaults(name) {
    let info = {};
    try {
      info = await api('GET', `/v1/channels/${encodeURIComponent(name)}`);
    } catch (e) { /* a channel not created yet: the browser's */ }
    if (channel !== name) return; // another channel was chosen meanwhile
    defaults = { lang: info.lang || '', time_zone: info.time_zone || '' };
    if (!prefs.previewLang) $('preview-lang').value = defaults.lang || navigator.language || 'en';
    if (!prefs.previewTz) $('preview-tz').value = defaults.time_zone || Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
    for (const b of briefs.values()) show(b, true);
    update();
  }

  function switchTo(name) {
    if (channel === name) return;
    const before = channel;
    channel = name;
    defaults = {};
    if (name) loadDefaults(name);
    prefs.channel = name;
    store(PREFS, prefs);
    if (name) select.value = name;
    $('live-title').textContent = name ? `Live on ${name}` : 'Live';
    at = null; // a new channel starts from its snapshot
    briefs.clear();
    items.clear();
    $('briefs').replaceChildren();
    $('empty').hidden = true;
    say($('action-status'), '');
    say($('compose-status'), '');
    showReaders();
    loadDraft();
    resubscribe(before);
  }

  // ---- Drafts: one per channel, in localStorage, with its own Idempotency-Key ---------------

  const form = $('compose');
  const fields = ['text', 'url', 'urgency', 'tags', 'lang', 'time', 'author'];

  const drafts = () => load(DRAFTS, {});
  const blank = () => ({ text: '', url: '', urgency: '5', tags: '', lang: '', time: '', author: '', pinned: false, idem: uuid() });

  function loadDraft() {
    const d = { ...blank(), ...(drafts()[channel] || {}) };
    for (const f of fields) $(f).value = d[f];
    $('pinned').checked = !!d.pinned;
    form.dataset.idem = d.idem;
    if (d.tags || d.lang || d.time || d.author) $('more').open = true; // nothing kept out of sight
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
    // The editor's own choice, else the channel's (GET /v1/channels/{channel}), else the browser's.
    $('preview-lang').value = prefs.previewLang || defaults.lang || navigator.language || 'en';
    $('preview-tz').value = prefs.previewTz || defaults.time_zone || zone;
    $('time-help').textContent = `In your time zone (${zone}). Leave empty for now.`;
    update();
  }

  function saveDraft() {
    if (!channel) return;
    const all = drafts();
    const d = { idem: form.dataset.idem, pinned: $('pinned').checked };
    for (const f of fields) d[f] = $(f).value;
    if (!d.text && !d.url && !d.tags && !d.time && !d.author) delete all[channel];
    else all[channel] = d;
    store(DRAFTS, all);
  }

  function dropDraft() {
    const all = drafts();
    delete all[channel];
    store(DRAFTS, all);
    loadDraft(); // a blank draft, with a new Idempotency-Key
  }

  form.addEventListener('input', event => {
    if (event.target.id === 'preview-lang' || event.target.id === 'preview-tz') {
      prefs.previewLang = $('preview-lang').value.trim();
      prefs.previewTz = $('preview-tz').value.trim();
      store(PREFS, prefs);
      for (const b of briefs.values()) show(b, true); // the list's dates too
    } else {
      saveDraft();
    }
    update();
  });
  form.addEventListener('change', () => { saveDraft(); update(); });

  // The brief the draft would publish (without the fields left empty).
  function body() {
    const b = { text: $('text').value.trim(), urgency: Number($('urgency').value), pinned: $('pinned').checked };
    const url = $('url').value.trim();
    if (url) b.url = url;
    const tags = $('tags').value.split(',').map(t => t.trim()).filter(Boolean);
    if (tags.length) b.tags = tags;
    const lang = $('lang').value.trim();
    if (lang) b.lang = lang;
    const author = $('author').value.trim();
    if (author) b.author = author;
    const time = $('time').value;
    if (time) {
      const d = new Date(time); // the editor's local time
      if (!isNaN(d)) b.time = d.toISOString();
    }
    return b;
  }

  // What is wrong with the draft, in words, before the server says it.
  function problems(b) {
    const out = [];
    if (!b.text) out.push('Write the text of the brief.');
    if ([...b.text].length > MAX_TEXT) out.push(`The text is ${[...b.text].length} characters long; the limit is ${MAX_TEXT}.`);
    if (b.url) {
      let ok = false;
      try { ok = /^https?:$/.test(new URL(b.url).protocol); } catch (e) { /* not a URL */ }
      if (!ok) out.push('The link must be a full http:// or https:// address.');
    }
    if (b.tags && b.tags.length > MAX_TAGS) out.push(`${b.tags.length} tags: the limit is ${MAX_TAGS}.`);
    if ($('time').value && !b.time) out.push('The time is not a valid date and time.');
    return out;
  }

  function update() {
    const n = [...$('text').value.trim()].length;
    const count = $('count');
    count.textContent = n > MAX_TEXT ? `${n}/${MAX_TEXT}: ${n - MAX_TEXT} too many` : `${n}/${MAX_TEXT}`;
    count.classList.toggle('over', n > MAX_TEXT);
    const b = body();
    const preview = { id: '0-0', version: 1, time: b.time || new Date().toISOString(), ...b, text: b.text || 'Your headline' };
    $('preview').replaceChildren(renderLine(node('li'), preview, $('preview-lang').value.trim(), $('preview-tz').value.trim()));
  }

  // ---- Rendering a brief as the widget does ("14/02" then the headline) ----------------------

  const formats = new Map();
  const dateFormat = (lang, tz) => { // the widget's own (news-ticker.js, dateFormat)
    const k = lang + '|' + tz;
    if (!formats.has(k)) {
      const o = { day: '2-digit', month: '2-digit' };
      for (const args of [[lang || undefined, { ...o, timeZone: tz || undefined }], [lang || undefined, o], [undefined, o]]) {
        try { formats.set(k, new Intl.DateTimeFormat(...args)); break; } catch (e) { /* bad lang or zone */ }
      }
    }
    return formats.get(k);
  };
  const safeUrl = u => {
    try { const x = new URL(u); return /^https?:$/.test(x.protocol) ? x.href : null; } catch (e) { return null; }
  };

  function renderLine(li, b, lang, tz) {
    const fr = /^fr\b/i.test(lang || '');
    const urgent = b.urgency <= 2;
    li.classList.toggle('urgent', urgent);
    li.classList.toggle('pinned', !!b.pinned);
    const line = node('div', 'line');
    if (b.lang) line.lang = b.lang;
    const d = new Date(b.time);
    const time = node('time', null, isNaN(d) ? '' : dateFormat(lang, tz).format(d));
    if (b.time) time.dateTime = b.time;
    line.append(time, ' ');
    if (urgent) line.append(node('strong', 'badge', 'Urgent'), ' ');
    const url = safeUrl(b.url);
    const text = node(url ? 'a' : 'span', 'text', b.text);
    text.dir = 'auto';
    text.id = 'text-' + b.id;
    if (url) { text.href = url; text.rel = 'noopener noreferrer'; text.target = '_blank'; }
    line.append(text);
    if (b.author) {
      const by = node('span', 'by', (fr ? 'par' : 'by') + ' ');
      by.append(node('bdi', null, b.author));
      line.append(' ', by);
    }
    if (b.version > 1) line.append(' ', node('small', 'mark', fr ? 'corrigé' : 'corrected'));
    const old = li.querySelector(':scope > .line');
    if (old) old.replaceWith(line); else li.prepend(line);
    return li;
  }

  // ---- Publish ----------------------------------------------------------------------------

  async function publish() {
    const status = $('compose-status');
    if (busy || !session) return; // a double click publishes once
    if (!channel) { say(status, 'Not published: choose a channel first.', 'error'); select.focus(); return; }
    const b = body();
    const wrong = problems(b);
    if (wrong.length) { say(status, 'Not published: ' + wrong.join(' '), 'error'); $('text').focus(); return; }
    busy = true;
    $('publish').disabled = true;
    say(status, 'Publishing…');
    saveDraft(); // kept whatever happens next
    const target = channel;
    try {
      const brief = await api('POST', `/v1/channels/${encodeURIComponent(target)}/briefs`, {
        body: b, headers: { 'Idempotency-Key': form.dataset.idem },
      });
      if (channel === target) {
        dropDraft();
        show(brief);
      }
      say(status, `Published on ${target} at ${new Date().toLocaleTimeString()}.`, 'ok');
      $('text').focus();
    } catch (e) {
      let message = 'Not published: ' + e.message;
      if (e.type.endsWith(':idempotency-key-reused')) {
        // An earlier attempt of this draft reached the server with other content: this
        // version is a new brief, sent with a new key on the next try.
        form.dataset.idem = uuid();
        saveDraft();
        message = 'Not published: an earlier attempt of this draft, with different content, may already be on the channel (see the list). Publish again to send this version as a new brief.';
      } else if (e.status !== 401) {
        message += ' Your draft is kept on this device: publish again when it is fixed, it will be published once.';
      }
      if (session) say(status, message, 'error');
    } finally {
      busy = false;
      $('publish').disabled = false;
    }
  }

  form.addEventListener('submit', event => { event.preventDefault(); publish(); });
  form.addEventListener('keydown', event => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) { event.preventDefault(); publish(); }
  });
  $('discard').addEventListener('click', () => {
    dropDraft();
    say($('compose-status'), 'Draft discarded.', 'ok');
    $('text').focus();
  });

  // ---- The live list over the WebSocket protocol ---------------------------------------------

  let socket = null;
  let attempt = 0;
  let at = null; // {cursor, epoch} of the channel followed: where a reconnection resumes
  let keyed = null; // the private channel subscribed to with the key as its token
  let retryTimer = 0;
  const liveStatus = $('live-status');

  function openSocket() {
    clearTimeout(retryTimer);
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/ws`;
    const ws = new WebSocket(url, 'ticker.v1');
    socket = ws;
    say(liveStatus, 'Connecting…');
    ws.onopen = () => {
      attempt = 0;
      say(liveStatus, 'Live: changes appear as they happen.');
      subscribe(ws);
    };
    ws.onmessage = event => { if (socket === ws) receive(JSON.parse(event.data)); };
    ws.onclose = () => {
      if (socket !== ws) return;
      socket = null;
      if (!session) return;
      // Full jitter, as docs/protocol.md asks; the snapshot on resubscribe replaces the list.
      const wait = Math.random() * Math.min(15000, 500 * 2 ** attempt++);
      say(liveStatus, 'Connection lost: reconnecting… The list may be out of date until then.', 'error');
      retryTimer = setTimeout(openSocket, wait);
    };
  }

  function closeSocket() {
    clearTimeout(retryTimer);
    const ws = socket;
    socket = null;
    if (ws) ws.close(1000);
    channel = null;
    at = null;
    briefs.clear();
    items.clear();
    $('briefs').replaceChildren();
  }

  function resubscribe(before) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return; // onopen subscribes
    if (before) socket.send(JSON.stringify({ op: 'unsubscribe', channel: before }));
    subscribe(socket);
  }

  // Subscribes to the channel: from its cursor after a drop (only what was missed comes,
  // or a snapshot when the server cannot vouch for that: docs/protocol.md, "Resume").
  function subscribe(ws) {
    if (!channel) return;
    const m = { op: 'subscribe', channel };
    if (at && at.channel === channel) { m.since = at.cursor; if (at.epoch) m.epoch = at.epoch; }
    // A private channel opens to the key that writes it (docs/protocol.md, "Private
    // channels"): sent over this same-origin socket only once the server asked for it.
    if (keyed === channel && session) m.token = session.key;
    ws.send(JSON.stringify(m));
  }

  function receive(m) {
    if (m.channel !== channel) return; // an answer about a channel left behind
    if (m.cursor) {
      if (m.type !== 'snapshot' && at && at.channel === channel && cmp(m.cursor, at.cursor) <= 0) return; // seen
      at = { channel, cursor: m.cursor, epoch: m.type === 'snapshot' ? m.epoch : at && at.epoch };
    }
    if (m.type === 'subscribed') {
      if (m.recovered) say(liveStatus, 'Live again: what happened meanwhile is in the list.');
      if (at && at.channel === channel) at.epoch = m.epoch;
    } else if (m.type === 'snapshot') {
      briefs.clear();
      items.clear();
      $('briefs').replaceChildren();
      for (const b of m.briefs) show(b, true);
      arrange();
    } else if (m.type === 'brief' || m.type === 'correction') {
      show(m.brief);
    } else if (m.type === 'retraction') {
      remove(m.id);
    } else if (m.type === 'error' && m.code === 'token_required' && keyed !== channel && socket) {
      keyed = channel; // private (or just made private): follow it with the key, from the cursor
      subscribe(socket);
    } else if (m.type === 'error') {
      say(liveStatus, 'The live list cannot follow this channel: ' + m.message, 'error');
    }
  }

  const num = id => String(id || '0').split('-').map(Number);
  const cmp = (a, b) => { const x = num(a), y = num(b); return x[0] - y[0] || (x[1] || 0) - (y[1] || 0); };
  const order = (a, b) => (!!b.pinned - !!a.pinned) || cmp(b.id, a.id); // pinned on top, newest first

  function show(b, quiet) {
    const known = briefs.get(b.id);
    if (known && known.version > b.version) return; // an older state arriving late
    if (b.status === 'canceled') { remove(b.id); return; }
    briefs.set(b.id, b);
    let li = items.get(b.id);
    if (!li) {
      li = node('li');
      li.dataset.id = b.id;
      li.append(actions(b.id));
      items.set(b.id, li);
    }
    li.dataset.version = b.version;
    renderLine(li, b, $('preview-lang').value.trim(), $('preview-tz').value.trim()); // as readers see it
    const meta = li.querySelector(':scope > .meta') || node('p', 'meta');
    meta.textContent = `Version ${b.version}` + (b.pinned ? ' · pinned' : '') + (b.urgency <= 2 ? ' · breaking' : '') + ` · urgency ${b.urgency}` + (b.tags && b.tags.length ? ' · tags: ' + b.tags.join(', ') : '');
    li.querySelector(':scope > .line').after(meta);
    li.querySelector('[data-act=pin]').textContent = b.pinned ? 'Unpin' : 'Pin';
    if (!quiet) arrange();
  }

  function remove(id) {
    briefs.delete(id);
    const li = items.get(id);
    items.delete(id);
    if (li) {
      const focused = li.contains(document.activeElement);
      li.remove();
      if (focused) $('text').focus();
    }
    arrange();
  }

  // Puts the items in the widget's order, moving only those out of place (moving the
  // element that has the focus would take the focus away).
  function arrange() {
    const list = $('briefs');
    const wanted = [...briefs.values()].sort(order).map(b => items.get(b.id));
    wanted.forEach((li, i) => { if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null); });
    $('empty').hidden = wanted.length > 0 || !channel;
  }

  function actions(id) {
    const box = node('div', 'actions');
    for (const [act, label] of [['correct', 'Correct'], ['pin', 'Pin'], ['history', 'History'], ['retract', 'Retract']]) {
      const button = node('button', act === 'retract' ? 'danger-text' : null, label);
      button.type = 'button';
      button.dataset.act = act;
      button.setAttribute('aria-describedby', 'text-' + id);
      box.append(button);
    }
    return box;
  }

  $('briefs').addEventListener('click', event => {
    const button = event.target.closest('button[data-act]');
    if (!button) return;
    const id = button.closest('li').dataset.id;
    const b = briefs.get(id);
    if (!b) return;
    ({ correct: openCorrection, pin: togglePin, history: showHistory, retract: confirmRetract })[button.dataset.act](b, button);
  });

  const briefPath = b => `/v1/channels/${encodeURIComponent(b.channel || channel)}/briefs/${encodeURIComponent(b.id)}`;
  const actionStatus = $('action-status');

  async function togglePin(b, button) {
    button.disabled = true;
    try {
      const after = await api('PATCH', briefPath(b), { body: { pinned: !b.pinned } });
      show(after);
      say(actionStatus, after.pinned ? 'Pinned: it stays on top of every reader\'s list.' : 'Unpinned.', 'ok');
    } catch (e) {
      say(actionStatus, (b.pinned ? 'Not unpinned: ' : 'Not pinned: ') + e.message, 'error');
    } finally {
      button.disabled = false;
      button.focus();
    }
  }

  // Correct in place: a small form under the brief; only the fields changed are sent.
  function openCorrection(b, button) {
    const li = items.get(b.id);
    let f = li.querySelector('form.correct');
    if (f) { f.querySelector('textarea').focus(); return; }
    f = node('form', 'correct');
    f.noValidate = true;
    const uid = 'c-' + b.id;
    const field = (label, input, name) => {
      input.id = `${uid}-${name}`;
      input.name = name;
      const l = node('label', null, label);
      l.htmlFor = input.id;
      f.append(l, input);
      return input;
    };
    const text = field('Corrected text', node('textarea'), 'text');
    text.rows = 3;
    text.value = b.text;
    const url = field('Link', node('input'), 'url');
    url.type = 'url';
    url.value = b.url || '';
    const urgency = field('Urgency', node('select'), 'urgency');
    for (let i = 1; i <= 9; i++) urgency.add(new Option(i <= 2 ? `${i}: breaking` : String(i), String(i)));
    urgency.value = String(b.urgency);
    const status = node('p', 'status');
    status.setAttribute('role', 'status');
    const row = node('div', 'row');
    const save = node('button', null, 'Save correction');
    save.type = 'submit';
    const cancel = node('button', 'secondary', 'Cancel');
    cancel.type = 'button';
    row.append(save, cancel);
    f.append(row, status);
    li.append(f);
    text.focus();
    const close = () => { f.remove(); button.focus(); };
    cancel.addEventListener('click', close);
    f.addEventListener('keydown', event => {
      if (event.key === 'Escape') { event.preventDefault(); close(); }
      if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) { event.preventDefault(); f.requestSubmit(); }
    });
    f.addEventListener('submit', async event => {
      event.preventDefault();
      const now = briefs.get(b.id) || b;
      const changes = {};
      const t = text.value.trim();
      if (t !== now.text) changes.text = t;
      const u = url.value.trim() || null;
      if (u !== (now.url || null)) changes.url = u;
      if (Number(urgency.value) !== now.urgency) changes.urgency = Number(urgency.value);
      if (!t) { say(status, 'Not corrected: the text cannot be empty (retract the brief instead).', 'error'); return; }
      if ([...t].length > MAX_TEXT) { say(status, `Not corrected: the text is ${[...t].length} characters long; the limit is ${MAX_TEXT}.`, 'error'); return; }
      if (!Object.keys(changes).length) { say(status, 'Nothing changed: edit the text, link or urgency first.', 'error'); return; }
      save.disabled = true;
      try {
        const after = await api('PATCH', briefPath(now), { body: changes });
        show(after);
        say(actionStatus, `Corrected: version ${after.version} is live for every reader.`, 'ok');
        close();
      } catch (e) {
        say(status, 'Not corrected: ' + e.message, 'error');
        save.disabled = false;
      }
    });
  }

  // Retract, after a confirmation in a modal dialog (Escape or "Keep it" cancels).
  const confirmDialog = $('confirm');
  let pending = null;
  function confirmRetract(b, button) {
    pending = { b, button };
    $('confirm-text').textContent = `“${b.text}” will disappear from every reader's ticker. This cannot be undone.`;
    confirmDialog.showModal();
    $('confirm-no').focus();
  }
  $('confirm-no').addEventListener('click', () => confirmDialog.close());
  confirmDialog.addEventListener('close', () => {
    if (pending && pending.button.isConnected) pending.button.focus();
    pending = null;
  });
  $('confirm-yes').addEventListener('click', async () => {
    const { b } = pending || {};
    if (!b) return;
    confirmDialog.close();
    try {
      await api('DELETE', briefPath(b));
      remove(b.id);
      say(actionStatus, 'Retracted: it is gone from every reader\'s ticker.', 'ok');
    } catch (e) {
      say(actionStatus, 'Not retracted: ' + e.message, 'error');
    }
  });

  // History: who changed what and when (GET .../history).
  const historyDialog = $('history');
  let historyFrom = null;
  async function showHistory(b, button) {
    historyFrom = button;
    const tbody = $('history-table').tBodies[0];
    tbody.replaceChildren();
    $('history-caption').textContent = `“${b.text}”`;
    say($('history-status'), 'Loading…');
    historyDialog.showModal();
    $('history-close').focus();
    try {
      const h = await api('GET', briefPath(b) + '/history');
      for (const v of h.versions) {
        const tr = node('tr');
        const changes = node('pre', null, Object.entries(v.changes).map(([k, x]) => `${k}: ${JSON.stringify(x)}`).join('\n'));
        const td = node('td');
        td.append(changes);
        tr.append(node('td', null, String(v.version)), node('td', null, v.kind), node('td', null, v.by || '(no key)'),
          node('td', null, new Date(v.at).toLocaleString()), td);
        tbody.append(tr);
      }
      say($('history-status'), h.versions.length
        ? `${h.versions.length} ${h.versions.length === 1 ? 'version' : 'versions'}, oldest first.`
        : 'No versions recorded: this brief was published before ticker kept histories.');
    } catch (e) {
      say($('history-status'), 'The history cannot be shown: ' + e.message, 'error');
    }
  }
  $('history-close').addEventListener('click', () => historyDialog.close());
  historyDialog.addEventListener('close', () => { if (historyFrom && historyFrom.isConnected) historyFrom.focus(); });

  $('key').focus();
})();
