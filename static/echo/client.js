// A browser client for the echo server's ws/ route, over the echo.json subprotocol (echo/protocol.py).
// One ES module, no dependency, no build step:
//
//   import {EchoClient} from "/static/echo/client.js";
//   const echo = new EchoClient({groups: ["red"]});
//   echo.on("broadcast", (push) => console.log(push.sender, push.text));
//   echo.on("message", (message) => console.log(message.sender, "in", message.group, ":", message.text));
//   echo.connect();
//
// It reconnects by itself (exponential backoff, full jitter, capped), rejoins its groups and resumes
// with ?after=<the last id it has>, so that no broadcast or room message is missed, except after a
// close that means "do not come back" (CLOSE_FOR_GOOD): then it stays closed until connect() is called.
// echo(), say() and sendBinary() while the connection is not open throw NotOpenError: nothing is queued,
// since a line sent minutes late, after the conversation moved on, says something else. join() and
// leave() always take effect: at once when open, else on the next connect (the groups go in its URL).

export const PROTOCOL = "echo.json";

// Close codes after which the client does not reconnect by itself: the server or an administrator
// wants it gone, or it cannot succeed as it is.
export const ADMIN_DISCONNECT = 4000; // an administrator disconnected it (reason: "disconnected by USER")
export const TOKEN_EXPIRED = 4001; // its token expired: get a new one, then connect() again
export const POLICY_VIOLATION = 1008; // refused: a bad group name, a flood over the rate limit
export const CLOSE_FOR_GOOD = new Set([ADMIN_DISCONNECT, TOKEN_EXPIRED, POLICY_VIOLATION]);

// The envelope types the server sends; each is emitted as an event of the same name, its detail the
// envelope. Every envelope is also emitted as "envelope".
export const ENVELOPES = [
  "welcome", "echo", "broadcast", "message", "presence", "joined", "left", "error", "resumed",
];

// What a group name may be (echo/services.py GROUP_NAME): a bad one in the URL would get close 1008.
const GROUP_NAME = /^[A-Za-z0-9._-]{1,90}$/;
// What a subprotocol entry may hold (an RFC 7230 token): browsers refuse anything else.
const TOKEN_CHARS = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;
const ALL = "all"; // every connection is in it; it is never left, nor named in the URL
const SEEN_LIMIT = 5000; // ids remembered to drop a repeated push
const STABLE_AFTER = 10000; // ms open after which a connection counts as good: backoff starts over

export class NotOpenError extends Error {
  constructor(what, state) {
    super(`not sent: ${what}: the connection is not open (${state})`);
    this.name = "NotOpenError";
  }
}

export class EchoClient extends EventTarget {
  // url: the socket's URL, absolute or a path (default: ws/ on the page's host, wss: under https:).
  // token: sent as the subprotocol entry "bearer.TOKEN" beside "echo.json" (browsers cannot set headers).
  // groups: groups to be in from the start, besides "all".
  // after: the id of the last broadcast or message the page already has (e.g. kept from a previous visit).
  // backoff: {first, cap} in ms: the ceiling doubles from `first` to at most `cap`; each delay is random
  // below the ceiling (full jitter).
  constructor({url = "/ws/", token = null, groups = [], after = null, backoff = {}} = {}) {
    super();
    this.url = new URL(url, location.href);
    this.url.protocol = this.url.protocol.replace(/^http/, "ws");
    this.token = token;
    this.backoff = {first: backoff.first ?? 1000, cap: backoff.cap ?? 30000};
    this.lastId = after; // the newest broadcast or message id had: a reconnect asks for what came after
    this.user = null; // from the welcome: the username, or null for an anonymous connection
    this.connection = null; // from the welcome: this connection's id ("guest-<it>" when it speaks)
    this.online = null; // from the last presence envelope
    this.state = "idle"; // idle, connecting, open, reconnecting, closed
    this.socket = null;
    this.wanted = new Set(); // the groups to be in, besides "all": kept across reconnects
    this.seen = new Set();
    this.attempt = 0; // reconnects since the last stable connection
    this.retryTimer = null;
    this.openedAt = 0;
    this.closing = false; // close() was called: the close that follows is the person's
    for (const name of groups) {
      this.wanted.add(checkedGroup(name));
    }
  }

  // Call fn(detail) on each event of this type; return a function that stops it.
  on(type, fn) {
    const listener = (event) => fn(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  get groups() {
    return [ALL, ...this.wanted];
  }

  get isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.socket !== null) {
      return this; // connecting or open already
    }
    const protocols = [PROTOCOL];
    if (this.token) {
      if (!TOKEN_CHARS.test(this.token)) {
        throw new TypeError("a token may hold only letters, digits and !#$%&'*+.^_`|~-");
      }
      protocols.push("bearer." + this.token);
    }
    const url = new URL(this.url);
    for (const name of this.wanted) {
      url.searchParams.append("group", name);
    }
    if (this.lastId !== null) {
      url.searchParams.set("after", String(this.lastId));
    }
    this.setState("connecting", {url: url.href});
    const socket = new WebSocket(url, protocols);
    socket.binaryType = "arraybuffer";
    socket.addEventListener("open", () => this.onOpen(socket));
    socket.addEventListener("message", (event) => this.onMessage(event));
    socket.addEventListener("close", (event) => this.onClose(socket, event));
    this.socket = socket;
    return this;
  }

  // Close for good (until connect() is called again).
  close(code = 1000, reason = "closed by the user") {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.socket !== null) {
      this.closing = true;
      this.socket.close(code, reason);
    } else if (this.state !== "closed") {
      this.setState("closed", {code: null, reason: "", reconnect: false});
    }
  }

  echo(text) {
    this.sendEnvelope({type: "echo", text: String(text)}, "echo");
  }

  say(group, text) {
    this.sendEnvelope({type: "say", group: checkedGroup(group), text: String(text)}, "say in " + group);
  }

  sendBinary(bytes) {
    if (!this.isOpen) {
      throw new NotOpenError(bytes.byteLength + " bytes", this.state);
    }
    this.socket.send(bytes);
  }

  // Join now if open (the group is added once the server says "joined"), else on the next connect.
  join(group) {
    const name = checkedGroup(group);
    if (name === ALL) {
      return;
    }
    if (this.isOpen) {
      this.socket.send(JSON.stringify({type: "join", group: name}));
    } else {
      this.wanted.add(name);
    }
  }

  // Leave now if open, and in any case no longer rejoin it.
  leave(group) {
    const name = checkedGroup(group);
    this.wanted.delete(name);
    if (this.isOpen) {
      this.socket.send(JSON.stringify({type: "leave", group: name}));
    }
  }

  sendEnvelope(envelope, what) {
    if (!this.isOpen) {
      throw new NotOpenError(what, this.state);
    }
    this.socket.send(JSON.stringify(envelope));
  }

  setState(state, detail) {
    this.state = state;
    this.emit(state === "closed" ? "close" : state, detail);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, {detail}));
  }

  onOpen(socket) {
    if (socket !== this.socket) {
      return;
    }
    this.openedAt = Date.now();
    this.setState("open", {protocol: socket.protocol});
  }

  onMessage(event) {
    if (typeof event.data !== "string") {
      this.emit("binary", new Uint8Array(event.data));
      return;
    }
    let envelope;
    try {
      envelope = JSON.parse(event.data);
    } catch {
      this.emit("text", event.data); // not JSON: a server that did not take echo.json
      return;
    }
    if (envelope === null || typeof envelope !== "object") {
      this.emit("text", event.data);
      return;
    }
    const type = envelope.type;
    if (type === "broadcast" || type === "message") {
      if (this.seen.has(envelope.id)) {
        return;
      }
      if (this.seen.size >= SEEN_LIMIT) {
        this.seen.clear();
      }
      this.seen.add(envelope.id);
      this.lastId = Math.max(this.lastId ?? 0, envelope.id);
    } else if (type === "welcome") {
      this.user = envelope.user;
      this.connection = envelope.connection;
      if (this.lastId === null) {
        this.lastId = envelope.last_broadcast; // from here on, nothing is missed
      }
      this.setGroups(envelope.groups);
    } else if (type === "joined" || type === "left") {
      this.setGroups(envelope.groups);
    } else if (type === "presence") {
      this.online = envelope.online;
    }
    if (ENVELOPES.includes(type)) {
      this.emit(type, envelope);
    }
    this.emit("envelope", envelope);
  }

  setGroups(groups) {
    if (Array.isArray(groups)) {
      this.wanted = new Set(groups.filter((name) => name !== ALL));
    }
  }

  onClose(socket, event) {
    if (socket !== this.socket) {
      return;
    }
    this.socket = null;
    const stable = this.openedAt && Date.now() - this.openedAt >= STABLE_AFTER;
    this.openedAt = 0;
    const byUser = this.closing;
    this.closing = false;
    const reconnect = !byUser && !CLOSE_FOR_GOOD.has(event.code);
    this.setState("closed", {code: event.code, reason: event.reason, reconnect, byUser});
    if (!reconnect) {
      return;
    }
    if (stable) {
      this.attempt = 0;
    }
    // Full jitter: anywhere below a ceiling that doubles, so that a restarted server is not stampeded.
    const ceiling = Math.min(this.backoff.cap, this.backoff.first * 2 ** this.attempt);
    const delay = Math.round(Math.random() * ceiling);
    this.attempt += 1;
    this.retryTimer = setTimeout(() => this.connect(), delay);
    this.setState("reconnecting", {delay, at: Date.now() + delay, attempt: this.attempt});
  }
}

function checkedGroup(name) {
  if (typeof name !== "string" || !GROUP_NAME.test(name)) {
    const shown = JSON.stringify(name);
    throw new TypeError(`a group name is 1 to 90 letters, digits, '-', '_' or '.', not ${shown}`);
  }
  return name;
}
