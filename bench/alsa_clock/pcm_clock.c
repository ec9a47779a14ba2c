/*
 * pcm_clock: an ALSA PCM paced by a timer and nothing else, for the audio benchmark.
 *
 * This machine has no sound card (no /dev/snd, no snd-aloop or snd-dummy). PulseAudio's
 * null sinks are paced, but a client reaches them through ALSA's pulse plugin, which
 * runs libpulse's thread and protocol inside the measured process. A real card costs its
 * client one poll() wakeup per period and a memcpy. So does this device: its poll
 * descriptor is a timerfd that fires once per period, its hardware pointer is the
 * monotonic clock, playback is thrown away and capture loops over a raw file (s16le at
 * the stream's rate and channels), chosen by the absolute frame index, so reading the
 * same frames twice gives the same audio.
 *
 * Build: gcc -O2 -shared -fPIC -o libasound_module_pcm_clock.so pcm_clock.c -lasound
 * Use:   pcm_type.clock { lib "/path/libasound_module_pcm_clock.so" }
 *        pcm.clock { type clock infile "/path/mic.raw" }   (infile optional: silence)
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>
#include <alsa/asoundlib.h>
#include <alsa/pcm_external.h>

typedef struct {
	snd_pcm_ioplug_t io;
	int timer;              /* the poll descriptor: one expiry per period */
	int running;
	uint64_t start_ns;      /* the clock's zero: frame 0 was due then */
	uint64_t pos;           /* frames the "hardware" has played or captured */
	int16_t *mic;           /* capture source, looped; NULL: silence */
	size_t mic_samples;
} clk_t;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int clk_arm(clk_t *c, int on)
{
	struct itimerspec its;
	uint64_t period_ns = (uint64_t)c->io.period_size * 1000000000u / c->io.rate;
	memset(&its, 0, sizeof(its));
	if (on) {
		its.it_value.tv_sec = its.it_interval.tv_sec = period_ns / 1000000000u;
		its.it_value.tv_nsec = its.it_interval.tv_nsec = period_ns % 1000000000u;
	}
	return timerfd_settime(c->timer, 0, &its, NULL) < 0 ? -errno : 0;
}

static int clk_start(snd_pcm_ioplug_t *io)
{
	clk_t *c = io->private_data;
	c->start_ns = now_ns();
	c->running = 1;
	return clk_arm(c, 1);
}

static int clk_stop(snd_pcm_ioplug_t *io)
{
	clk_t *c = io->private_data;
	c->running = 0;
	return clk_arm(c, 0);
}

static int clk_prepare(snd_pcm_ioplug_t *io)
{
	clk_t *c = io->private_data;
	c->pos = 0;
	c->running = 0;
	return clk_arm(c, 0);
}

/* Frames due by now. A side that falls behind (playback not written, capture not read
 * within a buffer) holds the clock back, as if the card had waited for it; and the
 * pointer moves less than a whole buffer per call, because ioplug takes it modulo the
 * buffer and could not tell a whole buffer from no move at all (the stream would stop
 * for good after one late period). */
static snd_pcm_sframes_t clk_pointer(snd_pcm_ioplug_t *io)
{
	clk_t *c = io->private_data;
	if (c->running) {
		uint64_t ns = now_ns() - c->start_ns;
		/* split, so that ns * rate cannot overflow however long the run */
		uint64_t due = ns / 1000000000u * io->rate
			+ ns % 1000000000u * io->rate / 1000000000u;
		/* room relative to ioplug's own pointers, which wrap at the boundary */
		snd_pcm_uframes_t room = io->stream == SND_PCM_STREAM_PLAYBACK
			? snd_pcm_ioplug_hw_avail(io, io->hw_ptr, io->appl_ptr)
			: io->buffer_size - snd_pcm_ioplug_avail(io, io->hw_ptr, io->appl_ptr);
		uint64_t limit;
		if (room > io->buffer_size - 1)
			room = io->buffer_size - 1;
		limit = c->pos + room;
		if (due > limit) {
			c->start_ns += (due - limit) * 1000000000u / io->rate;
			due = limit;
		}
		if (due > c->pos)
			c->pos = due;
	}
	return (snd_pcm_sframes_t)(c->pos % io->buffer_size);
}

static snd_pcm_sframes_t clk_transfer(snd_pcm_ioplug_t *io,
				      const snd_pcm_channel_area_t *areas,
				      snd_pcm_uframes_t offset, snd_pcm_uframes_t size)
{
	clk_t *c = io->private_data;
	if (io->stream == SND_PCM_STREAM_CAPTURE) {
		char *base = (char *)areas->addr + (areas->first + areas->step * offset) / 8;
		int16_t *dst = (int16_t *)base;
		size_t n = (size_t)size * io->channels;
		if (c->mic == NULL) {
			memset(dst, 0, n * sizeof(int16_t));
		} else {
			/* the first sample of this region is the application's next frame */
			size_t at = (size_t)((uint64_t)io->appl_ptr * io->channels % c->mic_samples);
			for (size_t i = 0; i < n; i++) {
				dst[i] = c->mic[at++];
				if (at == c->mic_samples)
					at = 0;
			}
		}
	}
	return (snd_pcm_sframes_t)size;  /* playback: the audio is thrown away */
}

static int clk_poll_revents(snd_pcm_ioplug_t *io, struct pollfd *pfd, unsigned int nfds,
			    unsigned short *revents)
{
	clk_t *c = io->private_data;
	uint64_t expirations;
	(void)pfd;
	(void)nfds;
	if (read(c->timer, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
		return -errno;
	*revents = io->stream == SND_PCM_STREAM_PLAYBACK ? POLLOUT : POLLIN;
	return 0;
}

static int clk_close(snd_pcm_ioplug_t *io)
{
	clk_t *c = io->private_data;
	close(c->timer);
	free(c->mic);
	free(c);
	return 0;
}

static const snd_pcm_ioplug_callback_t clk_callback = {
	.start = clk_start,
	.stop = clk_stop,
	.prepare = clk_prepare,
	.pointer = clk_pointer,
	.transfer = clk_transfer,
	.poll_revents = clk_poll_revents,
	.close = clk_close,
};

static int load_mic(clk_t *c, const char *path)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t got;
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || st.st_size < 2) {
		close(fd);
		return -EINVAL;
	}
	c->mic_samples = (size_t)st.st_size / 2;
	c->mic = malloc(c->mic_samples * 2);
	if (c->mic == NULL) {
		close(fd);
		return -ENOMEM;
	}
	got = read(fd, c->mic, c->mic_samples * 2);
	close(fd);
	return got == (ssize_t)(c->mic_samples * 2) ? 0 : -EIO;
}

static int set_constraints(snd_pcm_ioplug_t *io)
{
	static const unsigned int access[] = {
		SND_PCM_ACCESS_RW_INTERLEAVED, SND_PCM_ACCESS_MMAP_INTERLEAVED };
	static const unsigned int formats[] = { SND_PCM_FORMAT_S16_LE };
	int err;
	if ((err = snd_pcm_ioplug_set_param_list(io, SND_PCM_IOPLUG_HW_ACCESS, 2, access)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_list(io, SND_PCM_IOPLUG_HW_FORMAT, 1, formats)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(io, SND_PCM_IOPLUG_HW_CHANNELS, 1, 2)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(io, SND_PCM_IOPLUG_HW_RATE, 8000, 48000)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(io, SND_PCM_IOPLUG_HW_PERIOD_BYTES,
						   64, 64 * 1024)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(io, SND_PCM_IOPLUG_HW_PERIODS, 2, 64)) < 0)
		return err;
	return 0;
}

SND_PCM_PLUGIN_DEFINE_FUNC(clock)
{
	snd_config_iterator_t i, next;
	const char *infile = NULL;
	clk_t *c;
	int err;
	(void)root;

	snd_config_for_each(i, next, conf) {
		snd_config_t *n = snd_config_iterator_entry(i);
		const char *id;
		if (snd_config_get_id(n, &id) < 0)
			continue;
		if (!strcmp(id, "comment") || !strcmp(id, "type") || !strcmp(id, "hint"))
			continue;
		if (!strcmp(id, "infile")) {
			if (snd_config_get_string(n, &infile) < 0) {
				SNDERR("infile must be a string");
				return -EINVAL;
			}
			continue;
		}
		SNDERR("Unknown field %s", id);
		return -EINVAL;
	}
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return -ENOMEM;
	c->timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (c->timer < 0) {
		err = -errno;
		free(c);
		return err;
	}
	if (infile != NULL && stream == SND_PCM_STREAM_CAPTURE && (err = load_mic(c, infile)) < 0) {
		SNDERR("cannot read infile %s", infile);
		close(c->timer);
		free(c->mic);
		free(c);
		return err;
	}
	c->io.version = SND_PCM_IOPLUG_VERSION;
	c->io.name = "timer-clocked PCM";
	c->io.flags = SND_PCM_IOPLUG_FLAG_MONOTONIC;
	c->io.poll_fd = c->timer;
	c->io.poll_events = POLLIN;
	c->io.mmap_rw = 0;
	c->io.callback = &clk_callback;
	c->io.private_data = c;
	err = snd_pcm_ioplug_create(&c->io, name, stream, mode);
	if (err < 0) {
		close(c->timer);
		free(c->mic);
		free(c);
		return err;
	}
	if ((err = set_constraints(&c->io)) < 0) {
		snd_pcm_ioplug_delete(&c->io);
		return err;
	}
	*pcmp = c->io.pcm;
	return 0;
}

SND_PCM_PLUGIN_SYMBOL(clock);
