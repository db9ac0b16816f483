// The chat page, on static/echo/client.js: echo, broadcasts, presence, and rooms where people talk.
// Everything a message says is shown with textContent: it is never parsed as HTML.
const app = document.getElementById("app");
// The template gives the client's URL ({% static %}: hashed in production), so both files cache forever.
const {EchoClient, NotOpenError, ADMIN_DISCONNECT, TOKEN_EXPIRED, POLICY_VIOLATION} = await import(
  app.dataset.client
);

const MAX_LINES = 2000; // older lines are dropped so that the log stays fast
const ECHO_TARGET = ""; // the "To" choice that sends to the server's echo, not to a room

const statusEl = document.getElementById("status");
const onlineEl = document.getElementById("online");
const whoEl = document.getElementById("who");
const log = document.getElementById("log");
const sendForm = document.getElementById("send-form");
const input = document.getElementById("message");
const target = document.getElementById("to");
const binaryBox = document.getElementById("binary");
const groupForm = document.getElementById("group-form");
const groupInput = document.getElementById("group");
const groupList = document.getElementById("group-list");
const connectButton = document.getElementById("connect");
const disconnectButton = document.getElementById("disconnect");

const client = new EchoClient({url: app.dataset.wsPath});
document.getElementById("url").textContent = client.url.href;

// The sender names this page has spoken as: a guest's changes with each connection.
const myNames = new Set();
let countdownTimer = null;

function clock(date) {
  return date.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
}

const LABELS = {sent: "You", received: "Server", broadcast: "Broadcast", system: "•", error: "!"};

function show(kind, text, {detail = "", when = null, who = LABELS[kind], mine = false} = {}) {
  const nearBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 60;
  const line = document.createElement("li");
  line.className = "line " + kind + (mine ? " mine" : "");
  const time = document.createElement("time");
  time.textContent = clock(when || new Date());
  const whoEl = document.createElement("span");
  whoEl.className = "who";
  whoEl.textContent = who;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  line.append(time, whoEl, body);
  if (detail) {
    const small = document.createElement("small");
    small.textContent = detail;
    line.append(small);
  }
  log.append(line);
  while (log.childElementCount > MAX_LINES) {
    log.firstElementChild.remove();
  }
  if (nearBottom || kind === "sent" || mine) {
    log.scrollTop = log.scrollHeight;
  }
}

function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
  const live = state === "open" || state === "connecting";
  connectButton.disabled = live;
  disconnectButton.disabled = !live && state !== "reconnecting";
}

function stopCountdown() {
  clearInterval(countdownTimer);
  countdownTimer = null;
}

// The rooms: a chip for each group the page is in ("all" cannot be left, nor spoken in), and the
// same groups in the composer's "To" list.
function renderGroups() {
  groupList.replaceChildren();
  const chosen = target.value;
  const options = [new Option("Server (echo)", ECHO_TARGET)];
  for (const name of client.groups) {
    const chip = document.createElement("li");
    chip.textContent = name;
    if (name !== "all") {
      const leave = document.createElement("button");
      leave.type = "button";
      leave.className = "leave";
      leave.setAttribute("aria-label", "Leave " + name);
      leave.textContent = "×";
      leave.addEventListener("click", () => leaveGroup(name));
      chip.append(leave);
      options.push(new Option("Room " + name, name));
      chip.classList.add("room");
      chip.title = "Speak in " + name;
      chip.addEventListener("click", (event) => {
        if (event.target === chip) {
          target.value = name;
          binaryBox.disabled = true;
          input.focus();
        }
      });
    }
    groupList.append(chip);
  }
  target.replaceChildren(...options);
  target.value = options.some((option) => option.value === chosen) ? chosen : ECHO_TARGET;
  binaryBox.disabled = target.value !== ECHO_TARGET;
}

function refuse(what) {
  show("error", "Not sent: " + what + " – the connection is not open (" + statusEl.textContent + ")");
}

function leaveGroup(name) {
  client.leave(name); // when not open, it is simply not rejoined
  renderGroups();
}

client.on("connecting", () => {
  stopCountdown();
  setStatus("connecting", "Connecting…");
});

client.on("open", () => setStatus("open", "Connected"));

client.on("close", ({code, reason, reconnect, byUser}) => {
  stopCountdown();
  const why = code === null ? "Disconnected" : "Closed (code " + code + (reason ? ": " + reason : "") + ")";
  if (code === ADMIN_DISCONNECT) {
    // An administrator closed this connection on purpose, to be rid of it: a page that came back
    // by itself a second later would make their action useless. The person reads why and may press
    // Connect. (A server that wants its clients back closes with 1001 or 1013: the page reconnects.)
    show("error", "Disconnected by an administrator (" + (reason || "no reason given") + ")." +
      " Press Connect to connect again.");
  } else if (code === TOKEN_EXPIRED) {
    show("error", "Your sign-in expired (" + (reason || "no reason given") + ")." +
      " Sign in, then press Connect.");
  } else if (code === POLICY_VIOLATION) {
    show("error", "The server refused this connection (" + (reason || "no reason given") + ")." +
      " Press Connect to try again.");
  } else if (reason && !byUser) {
    show("system", "The server closed the connection: " + reason + " (code " + code + ")");
  }
  setStatus("closed", why);
  if (reconnect) {
    statusEl.dataset.why = why; // the countdown below keeps saying why
  }
});

client.on("reconnecting", ({at}) => {
  const why = statusEl.dataset.why;
  const tick = () => {
    const seconds = Math.max(0, Math.ceil((at - Date.now()) / 1000));
    setStatus("reconnecting", why + " – reconnecting in " + seconds + " s");
  };
  tick();
  countdownTimer = setInterval(tick, 250);
});

client.on("welcome", (welcome) => {
  whoEl.textContent = welcome.user ? "Signed in as " + welcome.user : "Anonymous";
  myNames.add(welcome.user || "guest-" + welcome.connection);
  renderGroups();
});

client.on("echo", (echo) => show("received", echo.text));

client.on("binary", (bytes) => {
  show("received", new TextDecoder().decode(bytes), {detail: "binary, " + bytes.length + " bytes"});
});

client.on("text", (text) => show("received", text));

client.on("broadcast", (push) => {
  const sent = new Date(push.sent_at);
  const to = push.group.startsWith("user:") ? "you" : push.group;
  const detail = "from " + push.sender + " to " + to + " at " + clock(sent);
  show("broadcast", push.text, {detail, when: sent});
});

client.on("message", (message) => {
  show("message", message.text, {
    who: message.sender,
    detail: "in " + message.group,
    when: new Date(message.sent_at),
    mine: myNames.has(message.sender),
  });
});

client.on("presence", (presence) => {
  onlineEl.textContent = presence.online + " online";
});

client.on("resumed", (resumed) => {
  if (resumed.replayed > 0 || resumed.truncated) {
    show("system", "Caught up on " + resumed.replayed + " broadcast(s) missed while away" +
      (resumed.truncated ? "; older ones were no longer kept" : ""));
  }
});

client.on("joined", (joined) => {
  renderGroups();
  show("system", "Joined " + joined.group);
});

client.on("left", (left) => {
  renderGroups();
  show("system", "Left " + left.group);
});

client.on("error", (error) => show("error", error.error));

target.addEventListener("change", () => {
  binaryBox.disabled = target.value !== ECHO_TARGET;
});

sendForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value;
  if (text === "") {
    return;
  }
  const room = target.value;
  try {
    if (room !== ECHO_TARGET) {
      client.say(room, text); // shown when the room's message comes back, with its id and time
    } else if (binaryBox.checked) {
      client.sendBinary(new TextEncoder().encode(text));
      show("sent", text, {detail: "binary"});
    } else {
      client.echo(text);
      show("sent", text);
    }
  } catch (error) {
    if (!(error instanceof NotOpenError)) {
      throw error;
    }
    refuse("“" + text + "”");
    return;
  }
  input.value = "";
});

groupForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = groupInput.value.trim();
  if (name === "" || client.groups.includes(name)) {
    return;
  }
  if (!client.isOpen) {
    refuse("join " + name);
    return;
  }
  client.join(name); // the room shows once the server says "joined"
  groupInput.value = "";
});

connectButton.addEventListener("click", () => client.connect());
disconnectButton.addEventListener("click", () => client.close());

renderGroups();
client.connect();
