// The capture suite's web server: one port on the loopback, reached as two sites, `http://127.0.0.1:<port>` (site A)
// and `http://localhost:<port>` (site B) — different origins and different sites for cookies and SameSite. Tests
// register files, pages and redirects at run time and read back every request: method, host, path, headers, whether
// it was ranged, and which program sent it (the browser or `sdm`, told apart by the process that owns the client's
// socket, so a browser's own ranged resume is never mistaken for SDM).

import fs from "node:fs";
import http from "node:http";
import path from "node:path";

import { byteRange, content, sendPaced, sha256, unsatisfiable } from "./support.mjs";

const HTML = { "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store" };

/** Which program owns the other end of a loopback connection: "sdm", "browser", "test" (this process) or "other".
 * Found through /proc: the client socket's inode in /proc/net/tcp{,6}, then the process holding that inode. */
export function clientProgram(clientPort, serverPort) {
  const hex = (p) => p.toString(16).toUpperCase().padStart(4, "0");
  let inode = null;
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text;
    try {
      text = fs.readFileSync(table, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      if (f[1].endsWith(`:${hex(clientPort)}`) && f[2].endsWith(`:${hex(serverPort)}`)) {
        inode = f[9];
        break;
      }
    }
    if (inode) break;
  }
  if (!inode || inode === "0") return "other";
  const target = `socket:[${inode}]`;
  for (const pid of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    let exe;
    try {
      exe = fs.readlinkSync(`/proc/${pid}/exe`);
    } catch {
      continue;
    }
    const kind =
      Number(pid) === process.pid
        ? "test"
        : /\/sdm$/.test(exe)
          ? "sdm"
          : /chrom|firefox/i.test(path.basename(exe))
            ? "browser"
            : null;
    if (!kind) continue;
    let fds;
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === target) return kind;
      } catch {
        // Closed meanwhile.
      }
    }
  }
  return "other";
}

/**
 * Start the server. Returns:
 *   A, B              the two sites' origins
 *   file(name, opts)  register a file; returns {path, name, size, body, sha256, url(site), expire()}:
 *       size          bytes (deterministic content of `name`, see support.content)
 *       rate          bytes per second per response (throttled), optional
 *       disposition   "always" (default), "get" (GET only, HEAD without it) or "none"
 *       dispositionName  the name in Content-Disposition (default `name`)
 *       urlName       the last path segment of its URL (default `name`)
 *       length        false: no Content-Length, chunked, ranges ignored (an unknown size)
 *       cookie        "name=value": 403 without that cookie
 *       auth          "user:pass": 401 with a Basic challenge without those credentials
 *       once          true: the first GET is served, every later request gets 410 Gone
 *       htmlForOthers true: a request not from the browser gets a 200 HTML login page instead of the file
 *       delayOthersMs delay the first response to a non-browser client by this much (SDM's verification)
 *       methods       the methods that get the file (default GET and HEAD; add POST for a form)
 *   page(html, {cookies})   register an HTML page (each cookie a full Set-Cookie value); returns {path, url(site)}
 *   redirect(to)      register a 302 to `to`; returns {path, url(site)}
 *   requests          every request, in order: {method, host, site, path, url, headers, ranged, who, at, status}
 *   requestsFor(p)    the requests whose path is `p`
 */
export async function startTriggerServer() {
  const routes = new Map();
  const requests = [];
  const sockets = new Set();
  let next = 1;
  const id = () => `r${next++}`;

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    const serverPort = req.socket.localPort;
    if (req.socket.sdmWho === undefined) req.socket.sdmWho = clientProgram(req.socket.remotePort, serverPort);
    const host = req.headers.host ?? "";
    const entry = {
      method: req.method,
      host,
      site: host.startsWith("localhost") ? "B" : "A",
      path: url.pathname,
      url: req.url,
      headers: req.headers,
      ranged: typeof req.headers.range === "string",
      who: req.socket.sdmWho,
      at: Date.now(),
      status: null,
    };
    requests.push(entry);
    const origWriteHead = res.writeHead.bind(res);
    res.writeHead = (status, ...rest) => {
      entry.status = status;
      return origWriteHead(status, ...rest);
    };
    const route = routes.get(url.pathname);
    if (!route) {
      res.writeHead(404, HTML);
      res.end("<!doctype html><title>not found</title>not found");
      return;
    }
    try {
      route(req, res, entry);
    } catch (e) {
      res.writeHead(500, HTML);
      res.end(String(e));
    }
  });
  server.keepAliveTimeout = 2_000;
  const track = (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  };
  server.on("connection", track);
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const port = server.address().port;
  // `localhost` may resolve to ::1 first: answer there too when the machine has IPv6 on the loopback.
  const server6 = http.createServer((req, res) => server.emit("request", req, res));
  server6.on("connection", track);
  await new Promise((resolve) => {
    server6.once("error", () => resolve());
    server6.listen(port, "::1", () => resolve());
  });

  const A = `http://127.0.0.1:${port}`;
  const B = `http://localhost:${port}`;
  const at = (site) => (site === "B" ? B : A);

  function file(name, opts = {}) {
    const size = opts.size ?? 2 * 1024 * 1024;
    const body = content(name, size);
    const p = `/f/${id()}/${encodeURIComponent(opts.urlName ?? name)}`;
    let gets = 0;
    let othersDelayed = false;
    let expired = false;
    routes.set(p, (req, res, entry) => {
      if (expired) {
        res.writeHead(410, HTML);
        res.end("<!doctype html><title>gone</title>This link has expired.");
        return;
      }
      const methods = opts.methods ?? ["GET", "HEAD"];
      if (!methods.includes(req.method)) {
        res.writeHead(405, { Allow: methods.join(", ") });
        res.end();
        return;
      }
      if (opts.once) {
        gets += 1;
        if (req.method !== "GET" || gets > 1) {
          res.writeHead(410, HTML);
          res.end("<!doctype html><title>gone</title>This link worked once.");
          return;
        }
      }
      if (opts.auth) {
        const want = `Basic ${Buffer.from(opts.auth).toString("base64")}`;
        if (req.headers.authorization !== want) {
          res.writeHead(401, { ...HTML, "WWW-Authenticate": 'Basic realm="sdm-test"' });
          res.end("<!doctype html><title>401</title>log in");
          return;
        }
      }
      if (opts.cookie && !cookiesOf(req).includes(opts.cookie)) {
        res.writeHead(403, HTML);
        res.end(`<!doctype html><title>403</title>no ${opts.cookie.split("=")[0]} cookie`);
        return;
      }
      const respond = () => {
        if (opts.htmlForOthers && entry.who !== "browser") {
          const page = "<!doctype html><title>Sign in</title><form>user <input name=u></form>";
          res.writeHead(200, { ...HTML, "Content-Length": String(Buffer.byteLength(page)) });
          res.end(req.method === "HEAD" ? undefined : page);
          return;
        }
        serveBody(req, res, body, { ...opts, name });
      };
      if (opts.delayOthersMs && entry.who !== "browser" && !othersDelayed) {
        othersDelayed = true;
        entry.delayed = true;
        setTimeout(respond, opts.delayOthersMs);
        return;
      }
      respond();
    });
    return {
      path: p,
      name,
      size,
      body,
      sha256: sha256(body),
      url: (site = "A") => `${at(site)}${p}`,
      /** From now on every request gets 410 Gone, as an expired signed link does. */
      expire: () => {
        expired = true;
      },
    };
  }

  function page(html, { cookies = [] } = {}) {
    const p = `/p/${id()}`;
    routes.set(p, (req, res) => {
      const headers = { ...HTML };
      if (cookies.length) headers["Set-Cookie"] = cookies;
      res.writeHead(200, headers);
      res.end(`<!doctype html><meta charset=utf-8><title>${p}</title>${html}`);
    });
    return { path: p, url: (site = "A") => `${at(site)}${p}` };
  }

  function redirect(to) {
    const p = `/r/${id()}`;
    routes.set(p, (req, res) => {
      res.writeHead(302, { Location: to, "Cache-Control": "no-store" });
      res.end();
    });
    return { path: p, url: (site = "A") => `${at(site)}${p}` };
  }

  return {
    A,
    B,
    port,
    file,
    page,
    redirect,
    requests,
    requestsFor: (p) => requests.filter((r) => r.path === p),
    close: () =>
      new Promise((r) => {
        for (const s of sockets) s.destroy();
        server6.close(() => {});
        server.close(r);
      }),
  };
}

/** The request's cookies as "name=value" strings. */
export function cookiesOf(req) {
  return (req.headers?.cookie ?? "")
    .split(";")
    .map((c) => c.trim())
    .filter(Boolean);
}

function serveBody(req, res, body, opts) {
  const headers = {
    "Content-Type": opts.contentType ?? "application/octet-stream",
    "Cache-Control": "no-store",
    "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT",
    ETag: `"${sha256(body).slice(0, 16)}"`,
  };
  const disposition = opts.disposition ?? "always";
  if (disposition === "always" || (disposition === "get" && req.method !== "HEAD")) {
    const name = opts.dispositionName ?? opts.name ?? "";
    headers["Content-Disposition"] = `attachment; filename="${name}"; filename*=UTF-8''${encodeURIComponent(name)}`;
  }
  let slice = body;
  let status = 200;
  if (opts.length === false) {
    // Unknown size: no Content-Length, chunked, and no ranges.
    res.writeHead(200, headers);
  } else {
    headers["Accept-Ranges"] = "bytes";
    const range = byteRange(req.headers.range, body.length);
    if (range === "unsatisfiable") {
      unsatisfiable(res, body.length);
      return;
    }
    if (range) {
      const { start, end } = range;
      status = 206;
      headers["Content-Range"] = `bytes ${start}-${end}/${body.length}`;
      slice = body.subarray(start, end + 1);
    }
    headers["Content-Length"] = String(slice.length);
    res.writeHead(status, headers);
  }
  if (req.method === "HEAD") {
    res.end();
    return;
  }
  // Chunked responses go out in pieces even unthrottled, so they really are chunked.
  if (!opts.rate && opts.length === false) {
    for (let off = 0; off < slice.length; off += 64 * 1024) res.write(slice.subarray(off, off + 64 * 1024));
    res.end();
    return;
  }
  sendPaced(res, slice, opts.rate ?? 0);
}
