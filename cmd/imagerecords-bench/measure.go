package main

import (
	"bufio"
	"errors"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// heapObjectsMetric is the runtime/metrics name of the bytes occupied by
// heap objects, live or not yet swept: what a heap graph shows.
const heapObjectsMetric = "/memory/classes/heap/objects:bytes"

// heapLiveMetric is the runtime/metrics name of the heap marked live by
// the last GC: the memory actually retained, without the garbage that GC
// pacing lets accumulate.
const heapLiveMetric = "/gc/heap/live:bytes"

// heapObjects reads the current heap-objects bytes.
func heapObjects() uint64 {
	s := []metrics.Sample{{Name: heapObjectsMetric}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// heapPeaks are the largest heap sizes a heapSampler saw.
type heapPeaks struct {
	objects uint64 // heapObjectsMetric
	live    uint64 // heapLiveMetric
}

// heapSampler samples the heap every few milliseconds in a goroutine and
// keeps the peaks.
type heapSampler struct {
	stop chan struct{}
	done chan heapPeaks
}

func startHeapSampler(every time.Duration) *heapSampler {
	h := &heapSampler{stop: make(chan struct{}), done: make(chan heapPeaks, 1)}
	go func() {
		s := []metrics.Sample{{Name: heapObjectsMetric}, {Name: heapLiveMetric}}
		var peak heapPeaks
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			metrics.Read(s)
			peak.objects = max(peak.objects, s[0].Value.Uint64())
			peak.live = max(peak.live, s[1].Value.Uint64())
			select {
			case <-h.stop:
				h.done <- peak
				return
			case <-t.C:
			}
		}
	}()
	return h
}

// Stop ends the sampling and returns the peaks.
func (h *heapSampler) Stop() heapPeaks {
	close(h.stop)
	return <-h.done
}

// settle collects garbage and returns freed memory to the OS, so that the
// next measurement starts from the live heap only.
func settle() {
	runtime.GC()
	debug.FreeOSMemory()
}

// allocCounter measures the process's allocations over an interval.
type allocCounter struct{ mallocs, bytes uint64 }

func startAllocCounter() allocCounter {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return allocCounter{ms.Mallocs, ms.TotalAlloc}
}

// Stop returns the allocations and bytes allocated since start.
func (a allocCounter) Stop() (mallocs, bytes uint64) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs - a.mallocs, ms.TotalAlloc - a.bytes
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// resetPeakRSS resets the kernel's peak-RSS mark (VmHWM) of this process to
// its current RSS (Linux 4.0+), so that a later peakRSS covers one
// scenario only.
func resetPeakRSS() error {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// peakRSS reads VmHWM, the peak resident set size of the whole process.
func peakRSS() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		return kb << 10, err
	}
	return 0, errors.New("no VmHWM in /proc/self/status")
}

// cpuModel is the first "model name" of /proc/cpuinfo.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// loadAverage is the first three fields of /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted, or 0 for none.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// median returns the median of xs (the lower middle for an even count).
func median[T int64 | float64 | time.Duration](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// latencies collects durations from many goroutines.
type latencies struct {
	mu  sync.Mutex
	all []time.Duration
}

func (l *latencies) add(ds ...time.Duration) {
	l.mu.Lock()
	l.all = append(l.all, ds...)
	l.mu.Unlock()
}

// sorted returns the durations in increasing order.
func (l *latencies) sorted() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := slices.Clone(l.all)
	slices.Sort(s)
	return s
}
