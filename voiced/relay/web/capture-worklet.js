// AudioWorklet: the microphone as 24 kHz mono PCM16, posted to the page in 20 ms frames.
// The page creates its AudioContext at 24 kHz, so this usually only converts; where a
// browser insists on its own rate it also resamples (a box filter when decimating, which
// keeps most aliasing out of speech; linear interpolation when the context is slower).

class Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.target = o.targetRate || 24000;
    this.ratio = sampleRate / this.target; // input samples per output sample
    this.frame = new Int16Array(Math.round(this.target * (o.frameMs || 20) / 1000));
    this.n = 0;
    this.sumsq = 0;
    this.acc = 0; // decimating: the sum and count of the inputs of one output sample
    this.count = 0;
    this.phase = 0;
    this.prev = 0; // interpolating: the previous input sample
    this.running = true;
    this.port.onmessage = (e) => { if (e.data === "stop") this.running = false; };
  }

  push(v) {
    const s = v > 1 ? 1 : v < -1 ? -1 : v;
    this.sumsq += s * s;
    this.frame[this.n++] = s < 0 ? Math.round(s * 32768) : Math.round(s * 32767);
    if (this.n === this.frame.length) {
      const level = Math.sqrt(this.sumsq / this.n);
      const buf = this.frame.buffer;
      this.port.postMessage({ pcm: buf, level }, [buf]);
      this.frame = new Int16Array(this.n);
      this.n = 0;
      this.sumsq = 0;
    }
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const nch = input.length;
    const first = input[0];
    for (let i = 0; i < first.length; i++) {
      let x = first[i];
      if (nch > 1) {
        for (let c = 1; c < nch; c++) x += input[c][i];
        x /= nch;
      }
      if (this.ratio === 1) {
        this.push(x);
      } else if (this.ratio > 1) {
        this.acc += x;
        this.count++;
        this.phase += 1;
        if (this.phase >= this.ratio) {
          this.push(this.acc / this.count);
          this.phase -= this.ratio;
          this.acc = 0;
          this.count = 0;
        }
      } else {
        while (this.phase < 1) {
          this.push(this.prev + (x - this.prev) * this.phase);
          this.phase += this.ratio;
        }
        this.phase -= 1;
        this.prev = x;
      }
    }
    return true;
  }
}

registerProcessor("voiced-capture", Capture);
