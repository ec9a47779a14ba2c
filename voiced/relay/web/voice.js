// The seed's voice hook as a small module: connect, startStreaming, stopStreaming,
// disconnect and playAudioChunk, against `voiced relay` (GA Realtime events, a device
// token offered as a `voiced-token.<token>` subprotocol beside `voiced-relay`).
//
// Audio: one AudioContext at 24 kHz; the microphone goes through an AudioWorklet that
// posts 20 ms PCM16 frames; the reply plays through another that buffers, plays and
// reports what it really played. Interrupting (by voice: the server's speech_started
// while the reply plays; or by the button) stops playback at once and truncates the item
// at the played position; the button also cancels a response still being generated.
// A dropped connection is reopened with the same conversation, with backoff.
//
// Events (CustomEvent detail): state {state}, conversation {id}, transcript {role, text,
// item, final}, level {value}, played {type, item, played}, interrupted {source, item,
// audio_end_ms, played}, response {active}, session {session}, servererror {error},
// closed {code, reason, established}.

export const SAMPLE_RATE = 24000;
const FRAME_MS = 20;
const BACKOFF_S = [0.5, 1, 2, 4, 8, 15];
const MAX_DROPPED = 64;

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function fromBase64(text) {
  const s = atob(text);
  const bytes = new Uint8Array(s.length & ~1); // whole PCM16 samples only
  for (let i = 0; i < bytes.length; i++) bytes[i] = s.charCodeAt(i);
  return bytes.buffer;
}

export class VoiceClient extends EventTarget {
  /**
   * @param {object} o
   * @param {string} o.url the relay's WebSocket URL (ws: or wss:, no query)
   * @param {string} o.token the device token
   * @param {string} o.agentId
   * @param {string=} o.voice one of the agent's voices
   * @param {string=} o.conversationId continue this conversation
   * @param {function(VoiceClient): Promise<string>=} o.check after a refused or failed
   *   connection: "unauthorized" (stop), "conversation-gone" (start a new one) or "retry"
   */
  constructor(o) {
    super();
    this.url = o.url;
    this.token = o.token;
    this.agentId = o.agentId;
    this.voice = o.voice || null;
    this.conversationId = o.conversationId || null;
    this.check = o.check || null;
    this.state = "idle";
    this.ws = null;
    this.ctx = null;
    this.player = null;
    this.stream = null;
    this.source = null;
    this.capture = null;
    this.streaming = false;
    this.playing = false;
    this.session = null;
    this.responseActive = false;
    this.attempt = 0;
    this._wanted = false;
    this._timer = null;
    this._seq = 0;
    this._flushes = new Map();
    this._dropped = new Set(); // items interrupted: their late deltas are not played
    this._lastAudioItem = null;
    this._audioReady = null;
  }

  // ---------------------------------------------------------------- public

  /** Open the connection (and the audio output); reconnects by itself until disconnect(). */
  async connect() {
    this._wanted = true;
    this.attempt = 0;
    await this._ensureAudio();
    this._open();
  }

  /** Start sending the microphone (asks for it the first time). */
  async startStreaming() {
    if (this.streaming) return;
    await this._ensureAudio();
    if (this.ctx.state !== "running") await this.ctx.resume();
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true,
               autoGainControl: true },
    });
    let source;
    try {
      source = this.ctx.createMediaStreamSource(stream);
    } catch (e) {
      // a browser that will not connect a microphone to a 24 kHz context: use its own
      // rate, and let the worklets resample
      await this._reopenAudio(true);
      source = this.ctx.createMediaStreamSource(stream);
    }
    const capture = new AudioWorkletNode(this.ctx, "voiced-capture", {
      numberOfInputs: 1, numberOfOutputs: 0, channelCount: 1, channelCountMode: "explicit",
      processorOptions: { targetRate: SAMPLE_RATE, frameMs: FRAME_MS },
    });
    capture.port.onmessage = (e) => this._onFrame(e.data);
    source.connect(capture);
    this.stream = stream;
    this.source = source;
    this.capture = capture;
    this.streaming = true;
    this._updateState();
  }

  /** Stop sending the microphone (and release it). */
  stopStreaming() {
    if (!this.streaming) return;
    this.streaming = false;
    try { this.source.disconnect(); } catch (e) { /* already */ }
    this.capture.port.postMessage("stop");
    this.capture.port.onmessage = null;
    for (const t of this.stream.getTracks()) t.stop();
    this.stream = this.source = this.capture = null;
    const td = this.session && this.session.audio && this.session.audio.input
      ? this.session.audio.input.turn_detection : undefined;
    if (td === null && this._open_()) {
      // no server turn detection: the end of streaming is the end of the turn
      this._send({ type: "input_audio_buffer.commit" });
      this._send({ type: "response.create" });
    }
    this._updateState();
  }

  /** Close for good (no reconnect). */
  disconnect() {
    this._wanted = false;
    clearTimeout(this._timer);
    this.stopStreaming();
    this._flushNow();
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = ws.onmessage = ws.onerror = null;
      try { ws.close(1000, "bye"); } catch (e) { /* closing */ }
    }
    this.session = null;
    this.responseActive = false;
    this._setState("idle");
  }

  /** Queue one base64 PCM16 chunk of ``item`` for playback. */
  playAudioChunk(base64, item) {
    if (!this.player || this._dropped.has(item)) return;
    const pcm = fromBase64(base64);
    this.player.port.postMessage({ type: "chunk", item, pcm }, [pcm]);
  }

  /**
   * Stop the reply now. source "voice" (the server heard speech; it cancels the
   * response itself) or "button" (this also cancels a response still being made).
   * Resolves to what was truncated ({item, audio_end_ms, played}) or null.
   */
  async interrupt(source = "button") {
    const cancel = source === "button" && this.responseActive;
    if (!this.playing && !cancel) return null;
    // deltas already on their way must not refill the buffer being flushed
    for (const item of [this._lastAudioItem, this._playingItem]) if (item) this._drop(item);
    const { item, played } = await this._flush();
    let cut = null;
    if (item) {
      this._drop(item);
      const ms = Math.floor(played * 1000 / SAMPLE_RATE);
      this._send({ type: "conversation.item.truncate", item_id: item, content_index: 0,
                   audio_end_ms: ms });
      cut = { item, audio_end_ms: ms, played };
    }
    if (cancel && this.responseActive) this._send({ type: "response.cancel" });
    this._emit("interrupted", { source, ...(cut || {}) });
    return cut;
  }

  /** Reconnect now (same conversation), e.g. with another voice. */
  reconnect() {
    if (!this._wanted) return this.connect();
    if (this.ws) this.ws.close(1000, "reconnect");
    else this._open();
  }

  // ---------------------------------------------------------------- audio

  async _ensureAudio() {
    if (!this._audioReady) this._audioReady = this._makeAudio(false);
    return this._audioReady;
  }

  async _reopenAudio(native) {
    const old = this.ctx;
    this._audioReady = this._makeAudio(native);
    await this._audioReady;
    if (old) old.close();
  }

  async _makeAudio(native) {
    let ctx;
    try {
      ctx = native ? new AudioContext({ latencyHint: "interactive" })
                   : new AudioContext({ sampleRate: SAMPLE_RATE, latencyHint: "interactive" });
    } catch (e) {
      ctx = new AudioContext({ latencyHint: "interactive" });
    }
    await ctx.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url));
    await ctx.audioWorklet.addModule(new URL("playback-worklet.js", import.meta.url));
    const player = new AudioWorkletNode(ctx, "voiced-playback", {
      numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1],
      processorOptions: { sourceRate: SAMPLE_RATE, prebufferMs: 80 },
    });
    player.port.onmessage = (e) => this._onPlayer(e.data);
    player.connect(ctx.destination);
    this.ctx = ctx;
    this.player = player;
  }

  _onFrame(m) {
    this._emit("level", { value: m.level, source: "mic" });
    if (this.session && this._open_()) {
      this._send({ type: "input_audio_buffer.append", audio: toBase64(m.pcm) }, false);
    }
  }

  _onPlayer(m) {
    if (m.type === "flushed") {
      const resolve = this._flushes.get(m.seq);
      this._flushes.delete(m.seq);
      if (resolve) resolve(m);
    }
    if (m.type === "start") {
      this._playingItem = m.item;
      this.playing = true;
    } else if (m.type === "idle" || m.type === "flushed") {
      this._playingItem = null;
      this.playing = false;
      this._emit("level", { value: 0, source: "speaker" });
    } else if (m.type === "progress") {
      this._emit("level", { value: m.level, source: "speaker" });
    }
    this._emit("played", m);
    this._updateState();
  }

  _flush() {
    if (!this.player) return Promise.resolve({ item: null, played: 0 });
    const seq = ++this._seq;
    return new Promise((resolve) => {
      this._flushes.set(seq, resolve);
      this.player.port.postMessage({ type: "flush", seq });
    });
  }

  _flushNow() {
    if (this.player) this.player.port.postMessage({ type: "flush", seq: 0 });
  }

  _drop(item) {
    this._dropped.add(item);
    if (this._dropped.size > MAX_DROPPED) {
      this._dropped.delete(this._dropped.values().next().value);
    }
  }

  // ---------------------------------------------------------------- connection

  _open_() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  _open() {
    clearTimeout(this._timer);
    const q = new URLSearchParams({ agent_id: this.agentId });
    if (this.voice) q.set("voice", this.voice);
    if (this.conversationId) q.set("conversation_id", this.conversationId);
    this.session = null;
    this._setState(this.attempt > 0 ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new WebSocket(`${this.url}?${q}`, ["voiced-relay", `voiced-token.${this.token}`]);
    } catch (e) {
      this._emit("servererror", { error: { message: String(e) } });
      this._setState("error");
      return;
    }
    this.ws = ws;
    ws.onmessage = (e) => {
      let ev;
      try { ev = JSON.parse(e.data); } catch (err) { return; }
      if (!ev || typeof ev.type !== "string") return;
      try {
        this._onEvent(ev);
      } catch (err) { // one unreadable event (bad base64...) must not end the page
        console.warn("voiced: could not handle", ev.type, err);
      }
    };
    ws.onclose = (e) => { if (this.ws === ws) this._onClose(e); };
  }

  async _onClose(e) {
    const established = this.session !== null;
    this.ws = null;
    this.session = null;
    this.responseActive = false;
    this._flushNow();
    this._emit("closed", { code: e.code, reason: e.reason, established });
    if (!this._wanted) return;
    this._setState("reconnecting");
    // a browser is not told why a handshake failed (401, 404...): ask the relay's
    // JSON endpoint what is wrong before trying again
    if (!established || e.code === 1008) {
      const verdict = this.check ? await this.check(this) : "retry";
      if (!this._wanted) return;
      if (verdict === "unauthorized") {
        this._wanted = false;
        this.stopStreaming();
        this._setState("unauthorized");
        return;
      }
      if (verdict === "conversation-gone") {
        this.conversationId = null;
        this._emit("conversation", { id: null });
      }
    }
    const base = established ? BACKOFF_S[0] : BACKOFF_S[Math.min(this.attempt, BACKOFF_S.length - 1)];
    this.attempt++;
    const delay = base * (0.8 + 0.4 * Math.random()) * 1000;
    this._timer = setTimeout(() => { if (this._wanted) this._open(); }, delay);
  }

  _send(event, count = true) {
    if (!this._open_()) return false;
    if (count) event = { event_id: `page_${++this._seq}`, ...event };
    this.ws.send(JSON.stringify(event));
    return true;
  }

  _onEvent(ev) {
    switch (ev.type) {
      case "session.created":
        this.session = ev.session || {};
        this.attempt = 0;
        this._emit("session", { session: this.session });
        this._updateState();
        break;
      case "conversation_created":
        if (typeof ev.conversation_id === "string") {
          this.conversationId = ev.conversation_id;
          this._emit("conversation", { id: ev.conversation_id });
        }
        break;
      case "response.created":
        this.responseActive = true;
        this._emit("response", { active: true });
        break;
      case "response.output_audio.delta":
        if (typeof ev.delta === "string" && typeof ev.item_id === "string") {
          this._lastAudioItem = ev.item_id;
          this.playAudioChunk(ev.delta, ev.item_id);
        }
        break;
      case "response.output_audio.done":
        if (this.player) this.player.port.postMessage({ type: "end" });
        break;
      case "response.done":
        this.responseActive = false;
        if (this.player) this.player.port.postMessage({ type: "end" });
        this._emit("response", { active: false });
        break;
      case "response.output_audio_transcript.delta":
        if (typeof ev.delta === "string") {
          this._emit("transcript", { role: "assistant", item: ev.item_id, text: ev.delta,
                                     final: false });
        }
        break;
      case "response.output_audio_transcript.done":
        if (typeof ev.transcript === "string") {
          this._emit("transcript", { role: "assistant", item: ev.item_id,
                                     text: ev.transcript, final: true });
        }
        break;
      case "conversation.item.input_audio_transcription.completed":
        if (typeof ev.transcript === "string" && ev.transcript.trim()) {
          this._emit("transcript", { role: "user", item: ev.item_id,
                                     text: ev.transcript.trim(), final: true });
        }
        break;
      case "input_audio_buffer.speech_started":
        if (this.playing) this.interrupt("voice");
        break;
      case "error":
        this._emit("servererror", { error: ev.error || {} });
        break;
      default:
        break;
    }
  }

  // ---------------------------------------------------------------- state

  _updateState() {
    if (this.state === "unauthorized" || this.state === "idle" && !this._wanted) return;
    if (!this.session) return; // connecting / reconnecting
    this._setState(this.playing ? "speaking" : this.streaming ? "listening" : "ready");
  }

  _setState(s) {
    if (s === this.state) return;
    this.state = s;
    this._emit("state", { state: s });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
