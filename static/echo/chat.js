// The chat page's client for ws/ over the echo.json subprotocol.
// Everything a message says is shown with textContent: it is never parsed as HTML.
(function () {
  "use strict";

  var PROTOCOL = "echo.json";
  var MAX_LINES = 2000; // older lines are dropped so that the log stays fast
  var BACKOFF_FIRST = 1000; // ms before the first reconnect
  var BACKOFF_CAP = 30000; // ms at most between reconnects
  var ADMIN_DISCONNECT = 4000; // the close code of an administrator's disconnect (echo/services.py)

  var app = document.getElementById("app");
  var statusEl = document.getElementById("status");
  var onlineEl = document.getElementById("online");
  var whoEl = document.getElementById("who");
  var log = document.getElementById("log");
  var sendForm = document.getElementById("send-form");
  var input = document.getElementById("message");
  var binaryBox = document.getElementById("binary");
  var groupForm = document.getElementById("group-form");
  var groupInput = document.getElementById("group");
  var groupList = document.getElementById("group-list");
  var connectButton = document.getElementById("connect");
  var disconnectButton = document.getElementById("disconnect");

  var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  var url = scheme + window.location.host + app.dataset.wsPath;
  document.getElementById("url").textContent = url;

  var socket = null;
  var wanted = true; // the person wants to be connected
  var attempt = 0; // reconnects since the last open
  var retryTimer = null;
  var countdownTimer = null;
  var groups = []; // the groups to be in, besides "all", kept across reconnects
  var lastBroadcast = null; // the newest broadcast id seen: a reconnect asks for what came after
  var seen = new Set(); // broadcast ids shown, so that a replay never shows one twice

  function clock(date) {
    return date.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
  }

  function show(kind, text, detail, when) {
    var nearBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 60;
    var line = document.createElement("li");
    line.className = "line " + kind;
    var time = document.createElement("time");
    time.textContent = clock(when || new Date());
    var who = document.createElement("span");
    who.className = "who";
    who.textContent = {sent: "You", received: "Server", broadcast: "Broadcast", system: "•", error: "!"}[kind];
    var body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    line.append(time, who, body);
    if (detail) {
      var small = document.createElement("small");
      small.textContent = detail;
      line.append(small);
    }
    log.append(line);
    while (log.childElementCount > MAX_LINES) {
      log.firstElementChild.remove();
    }
    if (nearBottom || kind === "sent") {
      log.scrollTop = log.scrollHeight;
    }
  }

  function setStatus(state, text) {
    statusEl.dataset.state = state;
    statusEl.textContent = text;
    var live = state === "open" || state === "connecting";
    connectButton.disabled = live;
    disconnectButton.disabled = !live && !retryTimer;
  }

  function renderGroups() {
    groupList.replaceChildren();
    ["all"].concat(groups).forEach(function (name) {
      var chip = document.createElement("li");
      chip.textContent = name;
      if (name !== "all") {
        var leave = document.createElement("button");
        leave.type = "button";
        leave.className = "leave";
        leave.setAttribute("aria-label", "Leave " + name);
        leave.textContent = "×";
        leave.addEventListener("click", function () { leaveGroup(name); });
        chip.append(leave);
      }
      groupList.append(chip);
    });
  }

  function isOpen() {
    return socket !== null && socket.readyState === WebSocket.OPEN;
  }

  function sendEnvelope(envelope) {
    socket.send(JSON.stringify(envelope));
  }

  function connect() {
    clearTimers();
    wanted = true;
    setStatus("connecting", "Connecting…");
    // Rejoin the groups in the handshake, and ask for the broadcasts missed while away.
    var query = groups.map(function (name) { return "group=" + encodeURIComponent(name); });
    if (lastBroadcast !== null) {
      query.push("after=" + lastBroadcast);
    }
    socket = new WebSocket(url + (query.length ? "?" + query.join("&") : ""), [PROTOCOL]);
    socket.binaryType = "arraybuffer";
    socket.addEventListener("open", onOpen);
    socket.addEventListener("message", onMessage);
    socket.addEventListener("close", onClose);
  }

  function onOpen() {
    attempt = 0;
    setStatus("open", "Connected");
  }

  function onMessage(event) {
    if (typeof event.data !== "string") {
      var bytes = new Uint8Array(event.data);
      show("received", new TextDecoder().decode(bytes), "binary, " + bytes.length + " bytes");
      return;
    }
    var message;
    try {
      message = JSON.parse(event.data);
    } catch (error) {
      show("received", event.data);
      return;
    }
    if (message.type === "echo") {
      show("received", message.text);
    } else if (message.type === "broadcast") {
      if (seen.has(message.id)) { return; }
      if (seen.size > 5000) { seen.clear(); }
      seen.add(message.id);
      lastBroadcast = Math.max(lastBroadcast || 0, message.id);
      var sent = new Date(message.sent_at);
      show("broadcast", message.text, "from " + message.sender + " to " + message.group + " at " + clock(sent), sent);
    } else if (message.type === "presence") {
      onlineEl.textContent = message.online + " online";
    } else if (message.type === "welcome") {
      whoEl.textContent = message.user ? "Signed in as " + message.user : "Anonymous";
      if (lastBroadcast === null) {
        lastBroadcast = message.last_broadcast; // from here on, nothing is missed
      }
      groups = message.groups.filter(function (name) { return name !== "all"; });
      renderGroups();
    } else if (message.type === "resumed") {
      if (message.replayed > 0 || message.truncated) {
        show("system", "Caught up on " + message.replayed + " broadcast(s) missed while away" +
          (message.truncated ? "; older ones were no longer kept" : ""));
      }
    } else if (message.type === "joined") {
      if (groups.indexOf(message.group) === -1) {
        groups.push(message.group);
        renderGroups();
      }
      show("system", "Joined " + message.group);
    } else if (message.type === "left") {
      show("system", "Left " + message.group);
    } else if (message.type === "error") {
      show("error", message.error);
    }
  }

  function onClose(event) {
    socket = null;
    var why = "Closed (code " + event.code + (event.reason ? ": " + event.reason : "") + ")";
    if (event.code === ADMIN_DISCONNECT) {
      // An administrator closed this connection on purpose, to be rid of it: a page that came
      // back by itself a second later would make their action useless. The person reads why and
      // may press Connect. (A server that wants its clients back closes with 1001 or 1013,
      // after which the page does reconnect by itself.)
      wanted = false;
      show("error", "Disconnected by an administrator (" + (event.reason || "no reason given") + ")." +
        " Press Connect to connect again.");
    } else if (event.reason && wanted) {
      show("system", "The server closed the connection: " + event.reason + " (code " + event.code + ")");
    }
    if (!wanted) {
      setStatus("closed", why);
      return;
    }
    // Exponential backoff, capped, with jitter (between half and all of the ceiling), so a restarted
    // server is not stampeded.
    var ceiling = Math.min(BACKOFF_CAP, BACKOFF_FIRST * Math.pow(2, attempt));
    var delay = Math.round(ceiling / 2 + Math.random() * ceiling / 2);
    attempt += 1;
    var due = Date.now() + delay;
    retryTimer = setTimeout(connect, delay);
    var tick = function () {
      var seconds = Math.max(0, Math.ceil((due - Date.now()) / 1000));
      setStatus("reconnecting", why + " – reconnecting in " + seconds + " s");
    };
    tick();
    countdownTimer = setInterval(tick, 250);
  }

  function clearTimers() {
    clearTimeout(retryTimer);
    clearInterval(countdownTimer);
    retryTimer = null;
    countdownTimer = null;
  }

  function disconnect() {
    wanted = false;
    clearTimers();
    if (socket !== null) {
      socket.close(1000, "closed by the user");
    } else {
      setStatus("closed", "Disconnected");
    }
  }

  function refuse(what) {
    show("error", "Not sent: " + what + " – the connection is not open (" + statusEl.textContent + ")");
  }

  function leaveGroup(name) {
    groups = groups.filter(function (group) { return group !== name; });
    renderGroups();
    if (isOpen()) {
      sendEnvelope({type: "leave", group: name});
    }
  }

  sendForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value;
    if (text === "") { return; }
    if (!isOpen()) {
      refuse("“" + text + "”");
      return;
    }
    if (binaryBox.checked) {
      socket.send(new TextEncoder().encode(text));
      show("sent", text, "binary");
    } else {
      sendEnvelope({type: "echo", text: text});
      show("sent", text);
    }
    input.value = "";
  });

  groupForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var name = groupInput.value.trim();
    if (name === "" || name === "all" || groups.indexOf(name) !== -1) { return; }
    if (!isOpen()) {
      refuse("join " + name);
      return;
    }
    sendEnvelope({type: "join", group: name}); // the group shows once the server says "joined"
    groupInput.value = "";
  });

  connectButton.addEventListener("click", connect);
  disconnectButton.addEventListener("click", disconnect);

  renderGroups();
  connect();
})();
