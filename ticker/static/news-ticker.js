/*! <news-ticker>: the ticker widget. Plain JS, no build step. Docs: docs/widget.md */
(() => {
'use strict';
if (!window.customElements || customElements.get('news-ticker')) return;

// Defaults: the server is where this script came from.
const SRC = document.currentScript;
const ORIGIN = SRC && SRC.src ? new URL(SRC.src).origin : location.origin;
const CAP = 30000; // backoff cap (ms)
const BASE = 500; // first backoff ceiling (ms)
const PROBE = 5000; // an open socket must answer a probe within this (ms)
const CONNECT = 10000; // a new socket must deliver its first message within this (ms)
const GRACE = 2000; // disconnected this long before "offline" shows (ms)
const WS_EVERY = 6; // while polling, try WebSocket again every Nth poll
const RM = '(prefers-reduced-motion: reduce)';
// Full jitter: a random delay up to an exponentially growing ceiling, capped at 30 s.
const jit = n => Math.random() * Math.min(CAP, BASE * 2 ** n);

const STR = {
  en: { label: 'News ticker', pause: 'Pause', play: 'Resume', more: n => n + ' new', off: 'Offline',
    fix: 'corrected', urgent: 'Urgent', by: 'by', signin: 'Sign in to follow this live coverage',
    closed: 'This live coverage is private' },
  fr: { label: "Fil d'actualité", pause: 'Pause', play: 'Reprendre', off: 'Hors ligne',
    more: n => n + (n > 1 ? ' nouvelles' : ' nouvelle'), fix: 'corrigé', urgent: 'Urgent', by: 'par',
    signin: 'Connectez-vous pour suivre ce direct', closed: 'Ce direct est réservé' },
};

const CSS = `
:host{display:block;box-sizing:border-box;height:var(--news-ticker-height,20rem);overflow:hidden;
contain:layout paint;font:var(--news-ticker-font,inherit);color:var(--news-ticker-color,#1a1a1a);
background:var(--news-ticker-background,#fff);border:var(--news-ticker-border,1px solid #d0d0d0)}
:host([mode=crawl]){height:var(--news-ticker-crawl-height,2.75rem)}
:host([hidden]){display:none}
*{box-sizing:border-box}
.wrap{position:relative;display:flex;flex-direction:column;height:100%}
.crawl{flex-direction:row;align-items:center}
.bar{display:flex;align-items:center;gap:.5em;padding:.3em .5em;flex:none}
button{font:inherit;font-size:.8em;color:inherit;background:none;border:1px solid currentColor;
border-radius:.25em;padding:.1em .6em;cursor:pointer}
:focus-visible{outline:2px solid var(--news-ticker-accent,#0b57d0);outline-offset:1px}
.status{font-size:.8em;color:var(--news-ticker-muted,#595959)}
.note{color:inherit;font-weight:600}
.scroller{flex:1;min-height:0;overflow-y:auto;overscroll-behavior:contain}
ol,ul{list-style:none;margin:0;padding:0}
li{padding:.4em .6em;border-top:1px solid var(--news-ticker-rule,#e2e2e2);overflow-wrap:anywhere;line-height:1.35}
time{font-weight:700;margin-inline-end:.25em;font-variant-numeric:tabular-nums}
a{color:inherit;text-decoration-color:var(--news-ticker-muted,#595959)}
a:hover{text-decoration-thickness:2px}
.urgent{font-weight:600;box-shadow:inset 3px 0 var(--news-ticker-urgent,#b00020)}
.urgent time,.badge{color:var(--news-ticker-urgent,#b00020)}
.badge{font-size:.75em;text-transform:uppercase}
.pinned{background:var(--news-ticker-pinned,#f1f4f9)}
.mark{font-size:.75em;font-weight:400;font-style:italic;color:var(--news-ticker-muted,#595959)}
.by{font-size:.8em;font-weight:400;color:var(--news-ticker-muted,#595959)}
.more{position:absolute;top:2.4em;left:50%;transform:translateX(-50%);z-index:1;border:0;
background:var(--news-ticker-accent,#0b57d0);color:var(--news-ticker-accent-text,#fff);box-shadow:0 1px 4px #0004}
.crawl .more{position:static;transform:none;flex:none;margin-inline-end:.5em}
.marquee{flex:1;min-width:0;height:100%;overflow:hidden;container-type:inline-size;display:flex;align-items:center}
.track{display:flex;width:max-content}
.track ul{display:flex;flex:none;min-width:100cqw}
.crawl li{border:0;padding:0 2em 0 0;white-space:nowrap;box-shadow:none}
.crawl .urgent{font-weight:700}
@media (prefers-reduced-motion:no-preference){.in{animation:in .4s ease-out}}
@keyframes in{from{opacity:0;transform:translateY(-.5em)}}
@media (prefers-reduced-motion:reduce){.marquee{overflow-x:auto}.track .copy{display:none}}
`;

let sheet;
const style = root => {
  try {
    if (!sheet) (sheet = new CSSStyleSheet()).replaceSync(CSS);
    root.adoptedStyleSheets = [sheet];
  } catch (e) { // no constructable stylesheets: old browser, no strict CSP to honour there
    const s = document.createElement('style');
    s.textContent = CSS;
    root.append(s);
  }
};

const el = (tag, part, text, cls) => {
  const e = document.createElement(tag);
  if (part) e.setAttribute('part', part);
  if (text != null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
};

// Stream IDs ("1732850000000-3") are the cursors and the brief ids: compare numerically.
const num = id => String(id || '0').split('-').map(Number);
const cmp = (a, b) => { const x = num(a), y = num(b); return x[0] - y[0] || (x[1] || 0) - (y[1] || 0); };
const order = (a, b) => (!!b.pinned - !!a.pinned) || cmp(b.id, a.id); // pinned on top, newest first
const safeUrl = u => {
  try { const x = new URL(u); return /^https?:$/.test(x.protocol) ? x.href : null; } catch (e) { return null; }
};
const getToken = async url => {
  const r = await fetch(url, { credentials: 'include', cache: 'no-store', signal: AbortSignal.timeout(1e4) });
  if (!r.ok) throw r.status;
  let v = (await r.text()).trim();
  if (v[0] == '{') v = JSON.parse(v).token;
  if (!v) throw 0;
  return v;
};
const dateFormat = (lang, tz) => {
  const o = { day: '2-digit', month: '2-digit' };
  for (const args of [[lang, { ...o, timeZone: tz || undefined }], [lang, o], [undefined, o]]) {
    try { return new Intl.DateTimeFormat(...args); } catch (e) { /* bad lang or time zone */ }
  }
};

class NewsTicker extends HTMLElement {
  static get observedAttributes() {
    return ['server', 'channel', 'token-url', 'mode', 'lang', 'time-zone', 'limit', 'label', 'poll-interval', 'speed'];
  }

  constructor() {
    super();
    this._briefs = new Map(); // the model: id -> brief
    this._shown = new Map(); // the view: id -> [version, li]
    this._paused = false;
    this._gen = 0;
    style(this.attachShadow({ mode: 'open' }));
    this._wake = () => this._check();
    this._down = () => this._status(false);
  }

  get server() { return (this.getAttribute('server') || ORIGIN).replace(/\/+$/, ''); }
  get channel() { return this.getAttribute('channel') || ''; }
  get tokenUrl() { return this.getAttribute('token-url'); }
  get cursor() { return this._cursor || null; }
  get paused() { return this._paused; }
  set paused(v) {
    this._paused = !!v;
    if (this._btn) this._btn.textContent = this._paused ? this._s.play : this._s.pause;
    this._sync();
  }

  _num(name, dflt, min, max) {
    const v = parseFloat(this.getAttribute(name));
    return v >= min ? Math.min(v, max) : dflt;
  }

  connectedCallback() {
    // Defined before the page is parsed: wait for the children (server-rendered markup).
    if (document.readyState != 'loading') return this._start();
    document.addEventListener('DOMContentLoaded', () => { if (this.isConnected) this._start(); }, { once: true });
  }
  disconnectedCallback() { this._stop(); }
  attributeChangedCallback(name, old, val) {
    if (old === val || !this._list) return;
    this._tok = null;
    if (name == 'channel' || name == 'server') { this._briefs.clear(); this._cursor = this._epoch = this._ch = null; }
    if (!this._again) { this._again = 1; queueMicrotask(() => { this._again = 0; if (this.isConnected) this._start(); }); }
  }

  _start() {
    this._stop();
    this._build();
    if (!this._adopted) { this._adopted = 1; this._adopt(); }
    this._sync();
    addEventListener('online', this._wake);
    addEventListener('offline', this._down);
    document.addEventListener('visibilitychange', this._wake);
    this._fails = this._attempt = this._polls = this._tn = this._off = this._nt = 0;
    this._blocked = this._pollOk = false;
    if (this.channel) { this._step(); this._defaults(); }
  }

  // The channel's title, language and time zone, where the page sets none (docs/widget.md).
  _defaults() {
    if (this._ch || (this.hasAttribute('time-zone') && this.hasAttribute('label') && this.closest('[lang]'))) return;
    const gen = this._gen;
    fetch(this.server + '/v1/channels/' + encodeURIComponent(this.channel), { credentials: 'omit' })
      .then(r => r.ok && r.json()).then(c => {
        if (gen != this._gen) return;
        this._ch = c || {};
        if (c && (c.lang || c.time_zone || c.title)) { this._build(); this._sync(); this._say(); }
      }, () => {});
  }

  _stop() {
    this._gen++;
    clearTimeout(this._t);
    clearTimeout(this._pt);
    clearTimeout(this._ot);
    this._pt = this._ot = this._tp = 0;
    this._drop();
    removeEventListener('online', this._wake);
    removeEventListener('offline', this._down);
    document.removeEventListener('visibilitychange', this._wake);
    if (this._anim) this._anim.cancel();
    this._anim = null;
  }

  // The shadow DOM: a bar (pause control, offline indicator), the view, the "N new" button.
  _build() {
    const c = this._ch || {}, lang = this._lang = (this.closest('[lang]') || {}).lang || c.lang || navigator.language || 'en';
    const s = this._s = STR[lang.slice(0, 2).toLowerCase()] || STR.en;
    const crawl = this._crawl = this.getAttribute('mode') == 'crawl';
    this._fmt = dateFormat(lang, this.getAttribute('time-zone') || c.time_zone);
    this._limit = Math.round(this._num('limit', 20, 1, 200));
    this._interval = this._num('poll-interval', 15, 1, 3600) * 1000;
    this._speed = this._num('speed', 60, 5, 1000);
    this._label = this.getAttribute('label') || c.title || s.label;
    this._live = false;
    this._shown.clear();

    const wrap = el('div', 'container', null, crawl ? 'wrap crawl' : 'wrap');
    wrap.lang = lang;
    const bar = el('div', 'bar', null, 'bar');
    const btn = this._btn = el('button', 'pause', this._paused ? s.play : s.pause);
    btn.type = 'button';
    btn.onclick = () => { this.paused = !this._paused; };
    const status = this._st = el('span', 'status', '', 'status');
    status.setAttribute('role', 'status');
    bar.append(btn, status);
    const more = this._more = el('button', 'new', null, 'more');
    more.type = 'button';
    more.hidden = true;
    more.onclick = () => this._reveal();

    let view;
    if (crawl) {
      view = el('div', 'crawl', null, 'marquee');
      view.setAttribute('role', 'marquee');
      view.setAttribute('aria-label', this._label);
      view.tabIndex = 0;
      const track = this._track = el('div', null, null, 'track');
      this._list = el('ul', 'list');
      this._copy = el('ul', null, null, 'copy');
      this._copy.setAttribute('aria-hidden', 'true');
      this._copy.inert = true;
      track.append(this._list, this._copy);
      view.append(track);
      // Hovering or focusing the strip holds it still too (in addition to the pause control).
      const hold = on => () => { this._hold = on; this._animate(); };
      view.onmouseenter = hold(1);
      view.onmouseleave = hold(0);
      view.addEventListener('focusin', hold(1));
      view.addEventListener('focusout', hold(0));
      wrap.append(bar, more, view);
    } else {
      view = el('div', 'scroller', null, 'scroller');
      this._list = el('ol', 'list');
      view.append(this._list);
      view.onscroll = () => { if (view.scrollTop < 2 && !this._paused && !more.hidden) this._sync(); };
      wrap.append(bar, view, more);
    }
    this._view = view;
    if (this._wrap) this._wrap.remove();
    this.shadowRoot.append(this._wrap = wrap);
    this._mq = matchMedia(RM);
    this._mq.onchange = () => this._animate();
  }

  // Server-rendered markup (GET /embed/{channel}) inside the element: take it over in place.
  _adopt() {
    for (const li of this.querySelectorAll('li[data-id]')) {
      const a = li.querySelector('a[href]'), t = li.querySelector('time'), d = li.dataset;
      const text = li.querySelector('.nt-text') || a;
      this._put({
        id: d.id, text: (text ? text.textContent : '').trim(), url: a && a.getAttribute('href'),
        time: t && t.getAttribute('datetime'), urgency: +d.urgency || 5, version: +d.version || 1,
        pinned: d.pinned == 'true', lang: li.getAttribute('lang'), author: d.author || null,
      });
    }
    const c = this.getAttribute('data-cursor');
    if (c) { this._cursor = c; this._epoch = this.getAttribute('data-epoch') || null; }
  }

  _put(b) {
    const o = this._briefs.get(b.id);
    if (!o || b.version > o.version) this._briefs.set(b.id, b);
  }

  // One message of protocol ticker.v1 (the polling fallback feeds its lists in as snapshots).
  _msg(m) {
    const t = m.type, c = m.cursor, old = c && this._cursor && cmp(c, this._cursor) <= 0;
    if (t == 'snapshot') {
      const ids = new Set();
      for (const b of m.briefs) { ids.add(b.id); this._put(b); }
      for (const id of this._briefs.keys()) if (!ids.has(id)) this._briefs.delete(id);
      this._epoch = m.epoch;
      this._ok();
    } else if (t == 'subscribed') {
      this._epoch = m.epoch;
      return this._ok();
    } else if (t == 'unsubscribed' || m.code == 'not_subscribed') {
      return this._un = 0;
    } else if (t == 'error' && /token|^unauth|^forbid/.test(m.code)) {
      return this._un || this._refused(m.code);
    } else if (t == 'token-expiring') {
      if (this.tokenUrl) { this._tok = null; this._idle = 2; this._step(); }
      return;
    } else if (t == 'error' && m.code == 'bad_cursor') {
      // A cursor the server cannot read (hand-made markup?): start again from a snapshot.
      this._cursor = this._epoch = null;
      this._drop();
      return this._next(0);
    } else if (t == 'brief' || t == 'correction') {
      if (old) return; // seen already: every event counts once
      if (t == 'brief' || this._briefs.has(m.brief.id)) this._put(m.brief);
    } else if (t == 'retraction') {
      if (old) return;
      this._briefs.delete(m.id);
    } else return;
    if (c) this._cursor = c;
    this._sync();
  }

  // Bring the view in line with the model. Paused: nothing moves. Scrolled: nothing is
  // inserted (the "N new" button counts what waits), corrections and retractions apply.
  _sync(force) {
    const list = this._list;
    if (!list) return;
    const all = [...this._briefs.values()].sort(order);
    for (const b of all.splice(this._limit)) this._briefs.delete(b.id);
    const frozen = this._paused && !force;
    const hold = frozen || (!force && !this._crawl && this._view.scrollTop > 2);
    const shown = this._shown;
    if (!frozen) {
      for (const [id, [v, li]] of shown) {
        const b = this._briefs.get(id);
        if (!b) { li.remove(); shown.delete(id); } else if (b.version != v) shown.set(id, [b.version, this._fill(li, b)]);
      }
    }
    let ref = list.firstChild, waiting = 0;
    for (const b of all) {
      let li = (shown.get(b.id) || [])[1];
      if (!li) {
        if (hold) { waiting++; continue; }
        li = this._fill(el('li'), b);
        shown.set(b.id, [b.version, li]);
        if (this._live && !this._crawl) { li.classList.add('in'); li.addEventListener('animationend', () => li.classList.remove('in'), { once: true }); }
      }
      if (frozen) continue;
      if (li == ref) ref = ref.nextSibling; else list.insertBefore(li, ref);
    }
    const more = this._more;
    more.hidden = !waiting;
    more.textContent = waiting ? this._s.more(waiting) : '';
    if (frozen) return this._animate();
    if (!this._live && (this._cursor || all.length)) {
      // Live only once the first content is in: the first list is not read out.
      this._live = true;
      if (!this._crawl) {
        const v = this._view;
        v.setAttribute('role', 'log');
        v.setAttribute('aria-label', this._label);
        v.tabIndex = 0;
      }
    }
    if (this._crawl) {
      this._copy.replaceChildren(...[...list.children].map(li => li.cloneNode(true)));
      for (const a of this._copy.querySelectorAll('a')) a.tabIndex = -1;
      this._animate();
    }
  }

  _fill(li, b) {
    const s = this._s, urgent = b.urgency <= 2, url = safeUrl(b.url);
    const kind = (urgent ? ' urgent' : '') + (b.pinned ? ' pinned' : '');
    li.setAttribute('part', 'item' + kind);
    li.className = kind.trim();
    li.dataset.id = b.id;
    if (b.lang) li.lang = b.lang; else li.removeAttribute('lang');
    const d = new Date(b.time);
    const time = el('time', 'date', isNaN(d) || !this._fmt ? '' : this._fmt.format(d));
    if (b.time) time.dateTime = b.time;
    const kids = [time, ' ']; // real spaces, so that it reads (and copies) as words
    if (urgent) kids.push(el('strong', 'badge', s.urgent, 'badge'), ' ');
    const text = el(url ? 'a' : 'span', url ? 'text link' : 'text', b.text);
    text.dir = 'auto'; // isolates bidi controls in the text
    if (url) { text.href = url; text.rel = 'noopener'; text.target = '_blank'; }
    kids.push(text);
    if (b.author) { // the public byline; <bdi> isolates a name in another script
      const by = el('span', 'byline', s.by + ' ', 'by');
      by.append(el('bdi', null, b.author));
      kids.push(' ', by);
    }
    if (b.version > 1) kids.push(' ', el('small', 'mark', s.fix, 'mark'));
    li.replaceChildren(...kids);
    return li;
  }

  _reveal() {
    if (!this._crawl) this._view.scrollTop = 0;
    this._sync(true);
    (this._crawl ? this._btn : this._view).focus();
  }

  _animate() {
    if (!this._crawl || !this._list) return;
    let a = this._anim;
    if (this._mq.matches || !this._list.children.length) {
      if (a) a.cancel();
      this._anim = null;
      return;
    }
    const ms = Math.max(5000, this._list.offsetWidth / this._speed * 1000);
    if (!a) {
      a = this._anim = this._track.animate(
        [{ transform: 'translateX(0)' }, { transform: 'translateX(-50%)' }], { duration: ms, iterations: Infinity });
    } else if (Math.abs(a.effect.getTiming().duration - ms) > 100) a.effect.updateTiming({ duration: ms });
    if (this._paused || this._hold) a.pause(); else a.play();
  }

  // Connection: WebSocket first; if it cannot connect while HTTP works, poll the list.
  _step() {
    const ws = this._ws;
    if (!this.isConnected || !this.channel) return;
    if (this.tokenUrl && !this._tok) return this._token();
    if (ws) return this._idle && ws.readyState == 1 && this._sub(ws);
    if (this._fails < 2 || (this._blocked ? this._polls >= WS_EVERY : this._pollOk)) return this._open();
    const gen = this._gen;
    this._poll().then(ok => {
      if (gen != this._gen || this._ws) return;
      if (ok.length) return this._refused(ok);
      this._pollOk = ok;
      if (ok) {
        this._polls++;
        this._attempt = 0;
        this._ok();
        this._next(this._blocked ? this._interval : 0);
      } else {
        this._blocked = false;
        this._polls = 0;
        this._status(false);
        this._next(this._backoff());
      }
    });
  }

  _next(ms) { clearTimeout(this._t); this._t = setTimeout(() => this._step(), ms); }
  _backoff() { return jit(++this._attempt); }

  // Private channels (token-url): docs/widget.md.
  _token() {
    const gen = this._gen;
    this._tp ||= getToken(this.tokenUrl).then(t => {
      if (gen == this._gen) { this._tp = 0; this._tok = t; this._fresh = 1; this._step(); }
    }, e => {
      if (gen != this._gen) return;
      this._tp = 0;
      if (e == 401 || e == 403) this._say(this._s.signin); else if (!this._ws) this._status(false);
      this._next(1000 + jit(++this._tn));
    });
  }

  _refused(code) {
    const shut = !this.tokenUrl || (this._fresh && !/expired|revoked|required/.test(code));
    this._tok = null;
    this._idle = 1;
    if (shut) this._say(this._s.closed);
    this._next(shut ? CAP + jit(9) : jit(++this._tn));
  }

  _ok() { this._tn = this._fresh = this._nt = 0; this._status(true); }

  _sub(ws) {
    const channel = this.channel, m = { op: 'subscribe', channel, token: this._tok || undefined };
    if (this._cursor) { m.since = this._cursor; m.epoch = this._epoch || undefined; }
    if ((this._un = this._idle > 1)) ws.send(JSON.stringify({ op: 'unsubscribe', channel }));
    this._idle = 0;
    ws.send(JSON.stringify(m));
  }

  _open() {
    let ws, up = false;
    try { ws = this._ws = new WebSocket(this.server.replace(/^http/, 'ws') + '/v1/ws', 'ticker.v1'); } catch (e) {
      this._ws = null;
      this._fails = 2;
      return this._next(this._backoff());
    }
    this._up = false;
    // A handshake that hangs (a silent proxy) counts as a failed attempt.
    const hung = setTimeout(() => { if (this._ws == ws) { ws.onclose(); ws.close(); } }, CONNECT);
    ws.onopen = () => { this._idle = 1; this._step(); };
    ws.onmessage = e => {
      clearTimeout(this._pt);
      this._pt = 0;
      if (!up) {
        clearTimeout(hung);
        up = this._up = true;
        this._fails = this._attempt = this._polls = 0;
        this._blocked = this._pollOk = false;
        this._status(true);
      }
      let m;
      try { m = JSON.parse(e.data); } catch (x) { return; }
      this._msg(m);
    };
    ws.onclose = () => {
      if (this._ws != ws) return;
      this._ws = null;
      clearTimeout(this._pt);
      this._pt = 0;
      this._status(false);
      if (!up) {
        this._fails++;
        if (this._pollOk) this._blocked = true; // HTTP works, WebSocket does not: poll
        this._pollOk = false;
        this._polls = 0;
      }
      this._next(this._blocked ? this._interval : this._backoff());
    };
  }

  _drop() {
    const ws = this._ws;
    if (!ws) return;
    this._ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try { ws.close(); } catch (e) { /* already closed */ }
  }

  async _poll() {
    try {
      // From the cursor: only what followed it, or the list if the server lost some of it.
      const since = this._cursor && this._epoch ?
        '&since=' + encodeURIComponent(this._cursor) + '&epoch=' + encodeURIComponent(this._epoch) : '';
      const tok = this._tok ? '&token=' + encodeURIComponent(this._tok) : '';
      const r = await fetch(this.server + '/v1/channels/' + encodeURIComponent(this.channel) +
        '/briefs?limit=' + this._limit + since + tok, { signal: AbortSignal.timeout(1e4), credentials: 'omit' });
      if (r.status == 401 || r.status == 403) return '' + (await r.json()).type;
      if (!r.ok) return false;
      const d = await r.json();
      if (d.recovered) {
        for (const m of d.events) this._msg(m); // each counts once, as over WebSocket
      } else if (!(this._cursor && d.epoch == this._epoch && cmp(d.cursor, this._cursor) < 0)) {
        // A list older than what is shown (it crossed a WebSocket delivery) is dropped.
        this._msg({ type: 'snapshot', briefs: d.briefs, cursor: d.cursor, epoch: d.epoch });
      }
      return true;
    } catch (e) {
      return false;
    }
  }

  // Back to the page or back online: check the connection at once.
  _check() {
    if (document.visibilityState == 'hidden' || !this._list) return;
    const ws = this._ws;
    if (ws && this._up && ws.readyState == 1) {
      if (this._pt) return;
      // A ping is answered at once (pong): proof the socket lives.
      this._pt = setTimeout(() => { this._pt = 0; this._drop(); this._status(false); this._attempt = 0; this._step(); }, PROBE);
      ws.send('{"op":"ping"}');
    } else if (!ws) {
      this._attempt = 0;
      this._next(0);
    }
  }

  // The quiet offline indicator: shown once disconnected for GRACE (at once when offline).
  _status(on) {
    const off = navigator.onLine === false;
    if (on && !off) {
      clearTimeout(this._ot);
      this._ot = this._off = 0;
      this._say();
    } else if (!this._ot || off) {
      clearTimeout(this._ot);
      this._ot = setTimeout(() => { this._off = 1; this._say(); }, off ? 0 : GRACE);
    }
  }

  _say(note) {
    if (note != null) this._nt = note;
    this._st.textContent = this._nt || (this._off ? this._s.off : '');
    this._st.className = this._nt ? 'status note' : 'status';
  }
}

customElements.define('news-ticker', NewsTicker);
})();
