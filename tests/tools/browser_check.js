// browser_check.js — opens an HTML page in headless Chromium through the DevTools protocol
// and checks it as a reader would see it: the page loads, every <img> has rendered (natural
// width > 0), and no console error, uncaught exception or failed resource load was reported.
//   node tests/tools/browser_check.js CHROMIUM PAGE.html PROFILE_DIR
// Prints one line "browser_check: ok: ..." (exit 0) or the problems (exit 1); exit 3 when
// Chromium does not start (the caller reports a skip). Needs nothing but node (Debian's
// nodejs 18 will do): the DevTools WebSocket is spoken by the small client below (RFC 6455:
// masked text frames out, unmasked frames in, fragments joined).
'use strict';
const { spawn } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const path = require('path');

// A minimal WebSocket client: connect(url, onMessage) -> Promise<{send(text)}>.
function connect(wsUrl, onMessage) {
  return new Promise((resolve, reject) => {
    const u = new URL(wsUrl);
    const key = crypto.randomBytes(16).toString('base64');
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, headers: {
      Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': key } });
    req.on('error', reject);
    req.on('upgrade', (res, sock) => {
      let buf = Buffer.alloc(0);
      let parts = [];
      sock.on('data', d => {
        buf = Buffer.concat([buf, d]);
        for (;;) {
          if (buf.length < 2) return;
          const fin = (buf[0] & 0x80) !== 0, op = buf[0] & 0x0f;
          let len = buf[1] & 0x7f, off = 2;
          if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
          else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
          if (buf.length < off + len) return;
          const payload = buf.subarray(off, off + len);
          buf = buf.subarray(off + len);
          if (op === 8) { sock.end(); return; }
          if (op === 1 || op === 0) {
            parts.push(payload);
            if (fin) { const text = Buffer.concat(parts).toString('utf8'); parts = []; onMessage(text); }
          }
        }
      });
      resolve({ send(text) {
        const data = Buffer.from(text, 'utf8');
        const mask = crypto.randomBytes(4);
        let head;
        if (data.length < 126) head = Buffer.from([0x81, 0x80 | data.length]);
        else if (data.length < 65536) { head = Buffer.alloc(4); head[0] = 0x81; head[1] = 0x80 | 126; head.writeUInt16BE(data.length, 2); }
        else { head = Buffer.alloc(10); head[0] = 0x81; head[1] = 0x80 | 127; head.writeBigUInt64BE(BigInt(data.length), 2); }
        const body = Buffer.alloc(data.length);
        for (let i = 0; i < data.length; i++) body[i] = data[i] ^ mask[i & 3];
        sock.write(Buffer.concat([head, mask, body]));
      } });
    });
    req.end();
  });
}

function getJson(url) {
  return new Promise((resolve, reject) => {
    http.get(url, res => {
      let s = '';
      res.on('data', d => { s += d; });
      res.on('end', () => { try { resolve(JSON.parse(s)); } catch (e) { reject(e); } });
    }).on('error', reject);
  });
}

const [chrome, page, profile] = process.argv.slice(2);
if (!chrome || !page || !profile) {
  console.error('usage: browser_check.js CHROMIUM PAGE.html PROFILE_DIR');
  process.exit(2);
}
const url = 'file://' + path.resolve(page);
const proc = spawn(chrome, ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
  '--remote-debugging-port=0', '--user-data-dir=' + profile, '--no-first-run', '--no-default-browser-check', 'about:blank'],
  { stdio: ['ignore', 'ignore', 'pipe'] });
proc.stderr.on('data', () => {});
const deadline = setTimeout(() => finish(['timed out after 25 s']), 25000);
let done = false;
function finish(problems, n) {
  if (done) return;
  done = true;
  clearTimeout(deadline);
  try { proc.kill('SIGKILL'); } catch (e) { /* gone */ }
  if (problems === null) { console.log('browser_check: Chromium did not start'); process.exit(3); }
  if (problems.length === 0) { console.log(`browser_check: ok: ${url} loaded, ${n} images rendered, no console errors`); process.exit(0); }
  for (const p of problems) console.log('browser_check: ' + p);
  process.exit(1);
}
proc.on('error', () => finish(null));

async function port() {
  const f = path.join(profile, 'DevToolsActivePort');
  for (let i = 0; i < 200; i++) {
    if (fs.existsSync(f)) {
      const t = fs.readFileSync(f, 'utf8').split('\n');
      if (t[0]) return t[0];
    }
    await new Promise(r => setTimeout(r, 50));
  }
  return null;
}

(async () => {
  const p = await port();
  if (!p) return finish(null);
  let targets = null;
  for (let i = 0; i < 50 && !targets; i++) {
    try {
      const list = await getJson(`http://127.0.0.1:${p}/json/list`);
      targets = list.filter(t => t.type === 'page');
      if (targets.length === 0) targets = null;
    } catch (e) { /* not yet */ }
    if (!targets) await new Promise(r => setTimeout(r, 100));
  }
  if (!targets) return finish(null);
  let ws = null;
  let id = 0;
  const pending = new Map();
  const problems = [];
  let loaded = null;
  const loadedP = new Promise(r => { loaded = r; });
  function send(method, params) {
    return new Promise((resolve, reject) => {
      id += 1;
      pending.set(id, { resolve, reject });
      ws.send(JSON.stringify({ id, method, params: params || {} }));
    });
  }
  const onMessage = data => {
    const m = JSON.parse(data);
    if (m.id && pending.has(m.id)) {
      const h = pending.get(m.id);
      pending.delete(m.id);
      if (m.error) h.reject(new Error(m.error.message)); else h.resolve(m.result);
      return;
    }
    if (m.method === 'Runtime.consoleAPICalled' && (m.params.type === 'error' || m.params.type === 'assert')) {
      problems.push('console error: ' + m.params.args.map(a => a.value !== undefined ? a.value : a.description).join(' '));
    } else if (m.method === 'Runtime.exceptionThrown') {
      const d = m.params.exceptionDetails;
      problems.push('uncaught exception: ' + (d.exception && d.exception.description || d.text));
    } else if (m.method === 'Log.entryAdded' && m.params.entry.level === 'error') {
      problems.push('console error: ' + m.params.entry.text + (m.params.entry.url ? ' (' + m.params.entry.url + ')' : ''));
    } else if (m.method === 'Network.loadingFailed') {
      problems.push('resource failed to load: ' + m.params.errorText);
    } else if (m.method === 'Page.loadEventFired') {
      loaded();
    }
  };
  try { ws = await connect(targets[0].webSocketDebuggerUrl, onMessage); } catch (e) {
    return finish(['DevTools connection failed: ' + e.message]);
  }
  await send('Runtime.enable');
  await send('Log.enable');
  await send('Network.enable');
  await send('Page.enable');
  const nav = await send('Page.navigate', { url });
  if (nav.errorText) return finish([`page did not load: ${nav.errorText}`]);
  await loadedP;
  await new Promise(r => setTimeout(r, 300));
  const res = await send('Runtime.evaluate', { returnByValue: true, expression: `(() => {
    const imgs = Array.from(document.images);
    return { title: document.title, n: imgs.length,
      bad: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')) };
  })()` });
  const v = res.result.value;
  if (!v.title) problems.push('the page has no title (did it load?)');
  for (const b of v.bad) problems.push('image did not render (natural width 0): ' + b);
  finish(problems, v.n);
})().catch(e => finish(['error: ' + e.message]));
