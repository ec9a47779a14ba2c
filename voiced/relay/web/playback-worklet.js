// AudioWorklet: the assistant's 24 kHz PCM16 through a small jitter buffer, and what was
// really played. Chunks arrive tagged with their item; the processor waits for
// `prebufferMs` of audio before it starts (or less once the reply has ended), plays the
// queue in order, and rebuffers after an underrun instead of crackling. It counts the
// samples of each item it has handed to the audio graph: that count, reported back on
// "flush", is where a truncation cuts the item (conversation.item.truncate's
// audio_end_ms), exact to the sample, since nothing else in the page can know it.
//
// Messages in:  {type: "chunk", item, pcm: ArrayBuffer of Int16}, {type: "end"},
//               {type: "flush", seq}, {type: "ping", seq} (answered in order: what was
//               sent before it has been taken in)
// Messages out: {type: "start", item}, {type: "progress", item, played, level},
//               {type: "item-done", item, played}, {type: "underrun", item, played},
//               {type: "idle", item, played}, {type: "flushed", seq, item, played},
//               {type: "pong", seq}
// `played` is in source samples (24 kHz), whatever the context's rate.

const REPORT_EVERY = 16; // render quanta between progress reports (about 85 ms)

class Playback extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.source = o.sourceRate || 24000;
    this.step = this.source / sampleRate; // source samples per output sample
    this.prebuffer = Math.round(this.source * (o.prebufferMs || 80) / 1000);
    this.queue = []; // {item, data: Float32Array, pos}
    this.queued = 0;
    this.playing = false; // false: waiting for the prebuffer
    this.ended = false; // the reply said it was complete: play out what is queued
    this.item = null; // the item being played, and its samples played so far
    this.played = 0;
    this.frac = 0; // resampling state (only when the context is not at 24 kHz)
    this.prev = 0;
    this.cur = null;
    this.quanta = 0;
    this.sumsq = 0;
    this.nsq = 0;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(m) {
    if (m.type === "chunk") {
      const pcm = new Int16Array(m.pcm);
      const data = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) data[i] = pcm[i] / 32768;
      this.queue.push({ item: m.item, data, pos: 0 });
      this.queued += data.length;
      this.ended = false;
    } else if (m.type === "end") {
      this.ended = true;
      if (!this.playing && this.queued === 0 && this.item !== null) {
        // rebuffering after an underrun when the reply ended: nothing more will come
        this.port.postMessage({ type: "idle", item: this.item, played: this.played });
        this.item = null;
        this.played = 0;
        this.ended = false;
      }
    } else if (m.type === "ping") {
      this.port.postMessage({ type: "pong", seq: m.seq });
    } else if (m.type === "flush") {
      const head = this.item !== null ? this.item : (this.queue.length ? this.queue[0].item : null);
      const played = this.item !== null ? this.played : 0;
      this.queue = [];
      this.queued = 0;
      this.playing = false;
      this.ended = false;
      this.item = null;
      this.played = 0;
      this.cur = null;
      this.frac = 0;
      this.prev = 0;
      this.port.postMessage({ type: "flushed", seq: m.seq, item: head, played });
    }
  }

  // the next source sample, or null when the queue is empty
  take() {
    const head = this.queue[0];
    if (!head) return null;
    if (head.item !== this.item) {
      if (this.item !== null) {
        this.port.postMessage({ type: "item-done", item: this.item, played: this.played });
      }
      this.item = head.item;
      this.played = 0;
      this.port.postMessage({ type: "start", item: this.item });
    }
    const s = head.data[head.pos++];
    this.played++;
    this.queued--;
    if (head.pos >= head.data.length) this.queue.shift();
    return s;
  }

  next() {
    if (this.step === 1) return this.take();
    if (this.cur === null) {
      this.cur = this.take();
      if (this.cur === null) return null;
    }
    const s = this.prev + (this.cur - this.prev) * this.frac;
    this.frac += this.step;
    while (this.frac >= 1 && this.cur !== null) {
      this.frac -= 1;
      this.prev = this.cur;
      this.cur = this.take();
    }
    return s;
  }

  process(inputs, outputs) {
    const out = outputs[0];
    const ch = out[0];
    let i = 0;
    if (!this.playing && this.queued > 0 && (this.queued >= this.prebuffer || this.ended)) {
      this.playing = true;
    }
    if (this.playing) {
      for (; i < ch.length; i++) {
        const s = this.next();
        if (s === null) break;
        ch[i] = s;
        this.sumsq += s * s;
        this.nsq++;
      }
      if (i < ch.length) {
        this.playing = false;
        if (this.ended) {
          this.port.postMessage({ type: "idle", item: this.item, played: this.played });
          this.item = null;
          this.played = 0;
          this.ended = false;
        } else {
          this.port.postMessage({ type: "underrun", item: this.item, played: this.played });
        }
      }
    }
    for (; i < ch.length; i++) ch[i] = 0;
    for (let c = 1; c < out.length; c++) out[c].set(ch);
    if (this.item !== null && ++this.quanta % REPORT_EVERY === 0) {
      const level = this.nsq ? Math.sqrt(this.sumsq / this.nsq) : 0;
      this.sumsq = 0;
      this.nsq = 0;
      this.port.postMessage({ type: "progress", item: this.item, played: this.played, level });
    }
    return true;
  }
}

registerProcessor("voiced-playback", Playback);
