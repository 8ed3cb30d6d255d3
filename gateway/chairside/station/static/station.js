// Chairside nurses' station: tiles from the server's event stream, alarm
// tones (Web Audio), and the staff actions.  Everything shown is set with
// textContent (never as HTML).
"use strict";

(function () {
  const body = document.body;
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const role = body.dataset.role;
  const focus = body.dataset.focus;
  const tiles = new Map();    // chair -> last tile data from the server
  const results = new Map();  // chair -> {ok, text}: the gateway's last answer
  const STALE_FEED_MS = 12000; // no event (heartbeats every 5 s) for this long: the board is not live

  // ---- sound (IEC 60601-1-8 style burst patterns) ---------------------------
  // high: 10 pulses (3 + 2, pause, 3 + 2), medium: 3 pulses, low: 2 pulses;
  // each pulse a tone with harmonics, 20 ms rise and fall.
  const PATTERNS = {
    high:   {freq: 523, dur: 0.15, at: [0, 0.2, 0.4, 0.8, 1.0, 1.6, 1.8, 2.0, 2.4, 2.6], every: 6.0},
    medium: {freq: 440, dur: 0.2,  at: [0, 0.3, 0.6], every: 8.0},
    low:    {freq: 349, dur: 0.2,  at: [0, 0.35], every: 20.0},
  };
  const RANK = {high: 3, medium: 2, low: 1};
  const sound = {started: false, tone: null, bursts: 0};
  window.stationSound = sound;
  let ctx = null;
  let wave = null;
  let timer = null;

  function pulse(at, freq, dur) {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.setPeriodicWave(wave);
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0, at);
    gain.gain.linearRampToValueAtTime(0.25, at + 0.02);
    gain.gain.setValueAtTime(0.25, at + dur - 0.02);
    gain.gain.linearRampToValueAtTime(0, at + dur);
    osc.connect(gain).connect(ctx.destination);
    osc.start(at);
    osc.stop(at + dur + 0.01);
  }

  function burst() {
    timer = null;
    if (!ctx || !sound.tone) return;
    const p = PATTERNS[sound.tone];
    const t0 = ctx.currentTime + 0.05;
    for (const dt of p.at) pulse(t0 + dt, p.freq, p.dur);
    sound.bursts += 1;
    timer = setTimeout(burst, p.every * 1000);
  }

  function soundIndicator() {
    const el = document.getElementById("sound");
    const on = sound.started && ctx && ctx.state === "running";
    el.textContent = on ? (sound.tone ? "SOUND ON: " + sound.tone.toUpperCase() + " alarm tone" : "SOUND ON")
                        : "SOUND OFF: press Start station";
    el.className = "sound " + (on ? "on" : "off");
    document.getElementById("start").hidden = on;
  }

  function updateSound() {
    let tone = null;
    for (const t of tiles.values()) {
      if (t.tone && (!tone || RANK[t.tone] > RANK[tone])) tone = t.tone;
    }
    body.dataset.tone = tone || "none";
    if (tone !== sound.tone) {
      sound.tone = tone;
      if (timer) clearTimeout(timer);
      timer = null;
      if (tone && ctx) burst();
    }
    soundIndicator();
  }

  function startStation() {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!ctx) {
      ctx = new Ctx();
      const real = new Float32Array([0, 1, 0.6, 0.5, 0.4, 0.3]);  // fundamental and four harmonics
      wave = ctx.createPeriodicWave(real, new Float32Array(real.length));
      ctx.onstatechange = soundIndicator;
    }
    ctx.resume().then(() => {
      sound.started = true;
      const tone = sound.tone;
      sound.tone = null;  // restart the pattern now that sound may play
      updateSound();
      if (!tone) soundIndicator();
    });
  }
  document.getElementById("start").addEventListener("click", startStation);

  // ---- tiles -----------------------------------------------------------------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function vital(label, value, unit, cls) {
    const box = el("div", "vital " + cls + (value === null ? " stale" : ""));
    box.append(el("span", "label", label));
    box.append(el("span", "value", value === null ? "STALE" : value));
    if (value !== null) box.append(el("span", "unit", unit));
    return box;
  }

  function render(t) {
    const tile = el("article", "tile");
    tile.id = "tile-" + t.chair;
    tile.dataset.chair = t.chair;
    tile.dataset.seq = t.seq === null ? "" : String(t.seq);
    if (t.stale) tile.classList.add("is-stale");
    if (t.drill) tile.classList.add("is-drill");
    if (t.chair === focus) tile.classList.add("focus");
    const top = t.alarms.find((a) => !a.acked);
    if (top) tile.classList.add("alarm-" + top.priority);

    const head = el("header");
    head.append(el("h2", null, "Chair " + (t.drill ? t.chair.slice(6) : t.chair)));
    if (t.drill) head.append(el("span", "drill-badge", "DRILL"));
    if (t.grafana) {
      const a = el("a", "grafana", "Grafana");
      a.href = t.grafana;
      a.target = "_blank";
      a.rel = "noopener";
      head.append(a);
    }
    if (!t.drill) {
      // the chair's latest infusion session as the PDF record for the chart (chairside report)
      const r = el("a", "record", "Session record (PDF)");
      r.href = "/chair/" + encodeURIComponent(t.chair) + "/report";
      r.download = "";
      head.append(r);
    }
    tile.append(head);

    tile.append(el("div", "sensor level-" + t.sensor_level, t.sensor));
    const vitals = el("div", "vitals");
    vitals.append(vital("SpO2", t.spo2, "%", "spo2"), vital("Pulse", t.pr, "bpm", "pr"));
    tile.append(vitals);
    tile.append(el("div", "bp" + (t.bp ? "" : " none"), t.bp ? "BP " + t.bp + " mmHg · " + t.bp_age : "NO BP"));
    tile.append(el("div", "box box-" + t.box.replace(" ", "-"), "box " + t.box));

    const list = el("ul", "alarms");
    for (const a of t.alarms) {
      const li = el("li", "alarm p-" + a.priority + (a.acked ? " acked" : " unacked") + (a.latched ? " latched" : ""));
      li.dataset.alarm = a.alarm;
      li.append(el("span", "prio", a.priority.toUpperCase()));
      li.append(el("span", "words", a.words));
      if (a.latched) li.append(el("span", "state", "LATCHED"));
      if (a.acked) li.append(el("span", "state", "ACK" + (a.by ? " by " + a.by : "")));
      if (!a.acked) {
        const b = el("button", "ack", "Acknowledge");
        b.type = "button";
        b.addEventListener("click", () => act(t.chair, "ack", {alarm: a.alarm}, "acknowledged " + a.words));
        li.append(b);
      }
      list.append(li);
    }
    if (!t.alarms.length) list.append(el("li", "no-alarm", "no active alarm"));
    tile.append(list);

    const actions = el("div", "actions");
    const standby = el("button", "standby", "Standby");
    standby.type = "button";
    standby.title = "Between patients: clears this chair's alarms until the next valid patient reading";
    standby.addEventListener("click", () => {
      if (window.confirm("Put chair " + t.chair + " in standby (between patients)? Its alarms are cleared.")) {
        act(t.chair, "standby", {}, "standby");
      }
    });
    actions.append(standby);
    const start = el("button", "session-start", "Start session");
    start.type = "button";
    start.title = "Start this chair's infusion session (the record chairside report makes)";
    start.addEventListener("click", () => {
      const ref = window.prompt("Clinic reference for this session, e.g. the encounter number (optional; never a patient name)", "");
      if (ref !== null) act(t.chair, "session", {action: "start", ref: ref.trim()}, "session started");
    });
    const end = el("button", "session-end", "End session");
    end.type = "button";
    end.addEventListener("click", () => {
      if (window.confirm("End the infusion session on chair " + t.chair + "?")) {
        act(t.chair, "session", {action: "end"}, "session ended");
      }
    });
    actions.append(start, end);
    if (role === "lead") {
      const lim = el("button", "limit", "Change limit…");
      lim.type = "button";
      lim.addEventListener("click", () => openLimit(t.chair));
      actions.append(lim);
    }
    tile.append(actions);
    const r = results.get(t.chair);
    const res = el("div", "result" + (r ? (r.ok ? " applied" : " refused") : ""), r ? r.text : "");
    res.setAttribute("role", "status");
    tile.append(res);

    const old = document.getElementById(tile.id);
    const parent = document.getElementById(t.drill ? "drills" : "chairs");
    if (old && old.parentNode === parent) {
      parent.replaceChild(tile, old);
    } else {
      if (old) old.remove();
      insertSorted(parent, tile);
    }
    if (t.drill) document.getElementById("drill-heading").hidden = false;
    if (t.chair === focus && !render.focused) {
      render.focused = true;
      tile.scrollIntoView({block: "center"});
    }
  }

  function order(chair) {
    const bare = chair.startsWith("drill-") ? chair.slice(6) : chair;
    return /^\d+$/.test(bare) ? [Number(bare), bare] : [1 << 30, bare];
  }

  function insertSorted(parent, tile) {
    const [n, s] = order(tile.dataset.chair);
    for (const other of parent.children) {
      const [m, o] = order(other.dataset.chair);
      if (n < m || (n === m && s < o)) {
        parent.insertBefore(tile, other);
        return;
      }
    }
    parent.append(tile);
  }

  // ---- actions ---------------------------------------------------------------
  async function act(chair, action, payload, what) {
    results.set(chair, {ok: true, text: "sending " + what + "…"});
    if (tiles.has(chair)) render(tiles.get(chair));
    let answer;
    try {
      const response = await fetch("/api/chair/" + encodeURIComponent(chair) + "/" + action, {
        method: "POST",
        credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
        body: JSON.stringify(payload),
      });
      answer = await response.json();
    } catch (err) {
      answer = {ok: 0, reason: "station not reachable", detail: String(err)};
    }
    if (answer.reason === "not_logged_in") {
      window.location.assign("/login");  // the session ended (12 h without a request, or logged out)
      return answer;
    }
    if (answer.ok && answer.session) what += " (" + answer.session + ")";
    const text = answer.ok ? "applied: " + what
                           : "refused: " + answer.reason + (answer.detail ? " (" + answer.detail + ")" : "");
    results.set(chair, {ok: !!answer.ok, text: text});
    if (tiles.has(chair)) render(tiles.get(chair));
    return answer;
  }
  window.stationAct = act;  // used by the tests to send exactly what a button sends

  const dialog = document.getElementById("limit-dialog");
  function openLimit(chair) {
    dialog.dataset.chair = chair;
    document.getElementById("limit-chair").textContent = chair;
    document.getElementById("limit-value").value = "";
    document.getElementById("limit-reason").value = "";
    dialog.showModal();
  }
  if (dialog) {
    document.getElementById("limit-cancel").addEventListener("click", () => dialog.close());
    document.getElementById("limit-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const param = document.getElementById("limit-param").value;
      const raw = document.getElementById("limit-value").value.trim();
      const value = raw === "" ? null : Number(raw);
      const reason = document.getElementById("limit-reason").value;
      dialog.close();
      act(dialog.dataset.chair, "limit", {param: param, value: value, reason: reason},
          param + " = " + (value === null ? "profile default" : value));
    });
  }

  // ---- the live feed -----------------------------------------------------------
  let lastEvent = 0;
  let mqttOk = true;  // the station server's own feed, from its heartbeats
  function connection(streamOk) {
    const live = streamOk && mqttOk;
    const c = document.getElementById("connection");
    c.textContent = live ? "LIVE"
      : !streamOk ? "NOT LIVE: no connection to the station server"
      : "NOT LIVE: the station lost the MQTT broker";  // nothing it shows is fed
    c.className = "connection " + (live ? "live" : "lost");
    body.classList.toggle("feed-lost", !live);
  }
  const source = new EventSource("/events");
  source.addEventListener("tiles", (ev) => {
    lastEvent = Date.now();
    const msg = JSON.parse(ev.data);
    mqttOk = msg.mqtt !== false;
    connection(true);
    for (const t of msg.tiles) {
      tiles.set(t.chair, t);
      render(t);
    }
    updateSound();
    window.stationUpdates = (window.stationUpdates || 0) + 1;
  });
  source.addEventListener("heartbeat", (ev) => {
    lastEvent = Date.now();
    mqttOk = JSON.parse(ev.data).mqtt !== false;
    connection(true);
  });
  source.onerror = () => connection(false);
  setInterval(() => {
    if (Date.now() - lastEvent > STALE_FEED_MS) connection(false);
  }, 1000);
  soundIndicator();
})();
