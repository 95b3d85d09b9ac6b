package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"
)

// profileListenEnv, when set in the environment of "imagerecords-bench
// serve-gateway", makes the gateway process serve net/http/pprof on that
// address and log it ("pprof_addr"), so that scenario 5 can profile the
// gateway apart from the simulator and the clients. It is the bench's own
// variable, not a gateway flag: imagerecordsd has no profiling endpoint.
const profileListenEnv = "IMAGERECORDS_BENCH_PPROF_LISTEN"

// serveProfiles serves net/http/pprof on addr and returns the bound
// address, or "" when addr is empty.
func serveProfiles(addr string) (string, error) {
	if addr == "" {
		return "", nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/memory", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, memoryClasses())
	})
	go func() { _ = http.Serve(ln, mux) }()
	return ln.Addr().String(), nil
}

// clockTicks is the kernel's USER_HZ, the unit of the CPU times in
// /proc/<pid>/stat: 100 on every Linux architecture Go supports.
const clockTicks = 100

// processCPU is the user+system CPU time process pid has used so far.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// count the fields after its closing parenthesis.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("unreadable /proc/<pid>/stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc/<pid>/stat")
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseUint(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// resetProcessPeakRSS resets the peak-RSS mark (VmHWM) of process pid to
// its current RSS, as resetPeakRSS does for this process.
func resetProcessPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// memoryClasses says where the process's memory is, in MiB, from
// runtime/metrics: heap objects, free heap not yet returned to the OS,
// goroutine stacks, the rest of the runtime's own, the heap goal, and the
// goroutine count.
func memoryClasses() string {
	names := []string{
		"/memory/classes/heap/objects:bytes",
		"/memory/classes/heap/unused:bytes",
		"/memory/classes/heap/free:bytes",
		"/memory/classes/heap/released:bytes",
		"/memory/classes/heap/stacks:bytes",
		"/memory/classes/os-stacks:bytes",
		"/memory/classes/metadata/other:bytes",
		"/gc/heap/live:bytes",
		"/gc/heap/goal:bytes",
		"/sched/goroutines:goroutines",
	}
	samples := make([]metrics.Sample, len(names))
	for i, n := range names {
		samples[i].Name = n
	}
	metrics.Read(samples)
	parts := make([]string, len(samples))
	for i, s := range samples {
		name := strings.TrimPrefix(strings.TrimPrefix(s.Name, "/memory/classes/"), "/")
		name, unit, _ := strings.Cut(name, ":")
		if unit == "bytes" {
			parts[i] = fmt.Sprintf("%s %.1f", name, float64(s.Value.Uint64())/(1<<20))
		} else {
			parts[i] = fmt.Sprintf("%s %d", name, s.Value.Uint64())
		}
	}
	return "MiB: " + strings.Join(parts, ", ")
}

// fetchText returns the body at url, or the error as text.
func fetchText(url string) string {
	res, err := http.Get(url)
	if err != nil {
		return err.Error()
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return err.Error()
	}
	return string(b)
}
