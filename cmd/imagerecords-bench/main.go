// Command imagerecords-bench measures the gateway against the physical
// limit of NextToken paging and against a caller who skips it.
//
// In one process it starts the ECD simulator (upstream/ecdsim) on a
// loopback HTTP server and the gateway (upstream.Client, service.Service,
// the connect handler) on a loopback HTTP/1.1 + h2c server, drives the
// chosen scenarios with connect-go gRPC clients and with a plain
// net/http + encoding/json reference client that calls the simulator
// directly, and prints one table: each figure through the gateway, the
// reference measured in the same run, their ratio, the target and whether
// it is met.
//
//	go run ./cmd/imagerecords-bench                       # every scenario, about 3 min on 2 cores
//	go run ./cmd/imagerecords-bench -scenarios 3 -cpuprofile cpu.out -memprofile mem.out
//
// Scenarios:
//
//  1. upstream calls of a full stream of N records (N = 1, 100, 101, 10,000)
//  2. a latency-bound stream: 10,000 records at 20 ms per upstream call
//  3. a CPU-bound stream: 200,000 records, no upstream latency
//  4. flat memory and backpressure: 1,000,000 records to a slow reader
//  5. many callers: 1,000 concurrent streams of 1,000 records at 20 ms,
//     in this process and again through the gateway in a process of its
//     own ("serve-gateway" pointed at this process's simulator), whose
//     CPU time and RSS (peak, at the end, -s5-after later) are the
//     gateway's alone
//  6. unary ListImageModifiedRecords at concurrency 64, no latency
//  7. a fleet: 500 desktops × 250 records at 20 ms under a quota of 100 calls/s
//  8. fleet memory: 1,000 desktops × 1,000 records to a slow reader
//  9. the attacks of issue 14 together (idle connection floods,
//     never-reading streams, unauthenticated health Watch, gzip bombs,
//     forged page tokens, slow request bodies, SIGHUP) for -s9-duration
//     against the gateway in a process of its own at its defaults, while a
//     legitimate caller lists and streams: its success rate and p99, and the
//     gateway's RSS before, at its peak and after. Not run by default:
//     -scenarios 9.
//  10. the account's API quota (issue 9): 30 concurrent streams of 2,000
//     records at 10 ms against a simulated quota of 50 calls/s, through
//     1 and 3 gateway replicas at their defaults, alone and sharing one
//     budget in a redis-server: wall time ÷ the quota floor, throttled
//     share, streams complete. Not run by default: -scenarios 10.
//
// "imagerecords-bench serve-gateway [gateway flags]" is the gateway process
// of scenarios 5 and 9.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"
)

// options are the command-line flags.
type options struct {
	scenarios     []int
	latency       time.Duration
	repeat        int
	telemetry     string
	compressMin   int
	clientWindow  int
	upstreamQPS   float64
	upstreamBurst int
	cpuProfile    string
	unaryProfile  string
	memProfile    string

	s1Sizes       []int
	s2Records     int
	s3Records     int
	s4Records     int
	s4Small       int
	s4ReadDelay   time.Duration
	s4Latency     time.Duration
	s5Streams     int
	s5Records     int
	s5Clients     int
	s5Ramp        time.Duration
	s5After       time.Duration
	s5Profile     string
	s6Concurrency int
	s6Duration    time.Duration
	s6Unloaded    time.Duration
	s7Desktops    int
	s7Records     int
	s7Quota       float64
	s8Desktops    int
	s8Records     int
	s8Small       int
	s9Duration    time.Duration
	s9After       time.Duration
	s10           quotaOptions
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("imagerecords-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scenarios := fs.String("scenarios", "1,2,3,4,5,6,7,8", "comma-separated scenarios to run")
	fs.DurationVar(&o.latency, "latency", 20*time.Millisecond, "upstream latency per call in scenarios 2, 5 and 7")
	fs.IntVar(&o.repeat, "repeat", 3, "repetitions of each timed run in scenarios 2 and 3 (medians are reported)")
	fs.StringVar(&o.telemetry, "telemetry", telemetryNoop, "gateway telemetry: noop (no-op OTel providers) or sdk (OTel SDK without exporters and the otelconnect interceptor, as imagerecordsd runs)")
	fs.IntVar(&o.compressMin, "compress-min-bytes", 0, "the gateway's --compress-min-bytes: gzip (fastest level) responses of at least this size to clients that accept it, as connect-go clients do; 0: never, imagerecordsd's default")
	fs.IntVar(&o.clientWindow, "client-window", 0, "HTTP/2 per-stream receive window of the gateway clients in bytes; 0 is Go's default (4 MiB)")
	fs.Float64Var(&o.upstreamQPS, "upstream-qps", 0, "the gateway's shared upstream rate limit in calls per second (imagerecordsd defaults to 100); 0: none")
	fs.IntVar(&o.upstreamBurst, "upstream-burst", 20, "burst above -upstream-qps")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of -repeat extra gateway streams of scenario 3 to this file")
	fs.StringVar(&o.unaryProfile, "unary-cpuprofile", "", "write a CPU profile of scenario 6's gateway run at concurrency 1 to this file")
	fs.StringVar(&o.memProfile, "memprofile", "", "write an allocation profile of those streams to this file (and FILE.base before it: go tool pprof -sample_index=alloc_space -base FILE.base FILE)")
	sizes := fs.String("s1-sizes", "1,100,101,10000", "scenario 1: record counts")
	fs.IntVar(&o.s2Records, "s2-records", 10_000, "scenario 2: records")
	fs.IntVar(&o.s3Records, "s3-records", 200_000, "scenario 3: records")
	fs.IntVar(&o.s4Records, "s4-records", 1_000_000, "scenario 4: records of the big stream")
	fs.IntVar(&o.s4Small, "s4-small", 10_000, "scenario 4: records of the stream it is compared with")
	fs.DurationVar(&o.s4ReadDelay, "s4-read-delay", time.Millisecond, "scenarios 4 and 8: the slow reader's sleep between messages")
	fs.DurationVar(&o.s4Latency, "s4-latency", 0, "scenarios 4 and 8: upstream latency per call")
	fs.IntVar(&o.s5Streams, "s5-streams", 1000, "scenario 5: concurrent streams (one desktop each)")
	fs.IntVar(&o.s5Records, "s5-records", 1000, "scenario 5: records per stream")
	fs.IntVar(&o.s5Clients, "s5-clients", 10, "scenario 5: gateway client connections the streams are spread over")
	fs.DurationVar(&o.s5Ramp, "s5-ramp", 0, "scenario 5: spread the stream starts evenly over this long; 0 starts them all at once")
	fs.DurationVar(&o.s5After, "s5-after", 10*time.Second, "scenario 5: how long after the streams of the gateway process end its RSS is read again")
	fs.StringVar(&o.s5Profile, "s5-profile", "", "scenario 5: write CPU and heap profiles of the gateway process's run to FILE.cpu and FILE.heap (the heap when half the records arrived)")
	fs.IntVar(&o.s6Concurrency, "s6-concurrency", 64, "scenario 6: concurrent callers")
	fs.DurationVar(&o.s6Duration, "s6-duration", 10*time.Second, "scenario 6: duration of each side's run")
	fs.DurationVar(&o.s6Unloaded, "s6-unloaded", 2*time.Second, "scenario 6: duration of each side's extra run at concurrency 1 (0 skips it)")
	fs.IntVar(&o.s7Desktops, "s7-desktops", 500, "scenario 7: desktops of the fleet")
	fs.IntVar(&o.s7Records, "s7-records", 250, "scenario 7: records per desktop")
	fs.Float64Var(&o.s7Quota, "s7-quota", 100, "scenario 7: the simulator's account quota in calls per second (the gateway runs at imagerecordsd's default rate limit)")
	fs.IntVar(&o.s8Desktops, "s8-desktops", 1000, "scenario 8: desktops of the big fleet")
	fs.IntVar(&o.s8Records, "s8-records", 1000, "scenario 8: records per desktop")
	fs.IntVar(&o.s8Small, "s8-small", 100, "scenario 8: desktops of the fleet it is compared with (long enough to fill the workers and the client's window, as the big one does)")
	fs.DurationVar(&o.s9Duration, "s9-duration", 60*time.Second, "scenario 9: how long the attacks last")
	fs.DurationVar(&o.s9After, "s9-after", 90*time.Second, "scenario 9: how long after the attack the gateway's RSS is read again")
	quotaFlags(fs, &o.s10)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if o.scenarios, err = parseInts(*scenarios); err != nil {
		return o, fmt.Errorf("-scenarios: %w", err)
	}
	for _, n := range o.scenarios {
		if n < 1 || n > 10 {
			return o, fmt.Errorf("-scenarios: there is no scenario %d", n)
		}
	}
	if o.s1Sizes, err = parseInts(*sizes); err != nil {
		return o, fmt.Errorf("-s1-sizes: %w", err)
	}
	if o.repeat < 1 || o.s5Clients < 1 || o.s6Concurrency < 1 {
		return o, fmt.Errorf("-repeat, -s5-clients and -s6-concurrency must be positive")
	}
	if o.s7Desktops < 1 || o.s7Desktops > 1000 || o.s8Desktops < 1 || o.s8Desktops > 1000 || o.s8Small < 1 || o.s8Small > 1000 || o.s7Quota <= 0 {
		return o, fmt.Errorf("-s7-desktops, -s8-desktops and -s8-small must be 1 to 1000 (one fleet call), -s7-quota positive")
	}
	return o, nil
}

func parseInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == serveGatewayCommand {
		os.Exit(serveGateway(os.Args[2:]))
	}
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		if err != flag.ErrHelp {
			fmt.Fprintln(os.Stderr, "imagerecords-bench:", err)
		}
		os.Exit(2)
	}
	if err := run(o, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "imagerecords-bench:", err)
		os.Exit(1)
	}
}

func run(o options, stdout, stderr io.Writer) error {
	printMachine(stdout, o)
	scenarios := map[int]func(options, io.Writer) (*report, error){
		1: scenarioCalls,
		2: scenarioLatencyBound,
		3: scenarioCPUBound,
		4: scenarioMemory,
		5: scenarioManyCallers,
		6: scenarioUnary,
		7: scenarioFleetSpeed,
		8: scenarioFleetMemory,
		9: scenarioAttack,

		10: scenarioQuota, // quota.go
	}
	order := slices.Sorted(slices.Values(o.scenarios))
	reports := map[int]*report{}
	start := time.Now()
	for _, n := range order {
		t := time.Now()
		fmt.Fprintf(stderr, "scenario %d ...\n", n)
		settle()
		rep, err := scenarios[n](o, stderr)
		if err != nil {
			return fmt.Errorf("scenario %d: %w", n, err)
		}
		rep.note("scenario time %.1f s", time.Since(t).Seconds())
		reports[n] = rep
	}
	fmt.Fprintln(stdout)
	printTable(stdout, reports, order)
	fmt.Fprintf(stdout, "\ntotal time %.1f s; load average at the end %s\n", time.Since(start).Seconds(), loadAverage())
	return nil
}

func printMachine(w io.Writer, o options) {
	fmt.Fprintf(w, "command:   %s\n", strings.Join(quoteArgs(os.Args), " "))
	fmt.Fprintf(w, "machine:   %s, NumCPU %d, GOMAXPROCS %d, %s %s/%s\n",
		cpuModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	gzip := "no response compression (imagerecordsd's default)"
	if o.compressMin > 0 {
		gzip = fmt.Sprintf("gzip (fastest level) for responses >= %d bytes", o.compressMin)
	}
	window := "Go default"
	if o.clientWindow > 0 {
		window = fmt.Sprintf("%d bytes", o.clientWindow)
	}
	qps := "off"
	if o.upstreamQPS > 0 {
		qps = fmt.Sprintf("%g/s, burst %d", o.upstreamQPS, o.upstreamBurst)
	}
	fmt.Fprintf(w, "setup:     one process; simulator on loopback HTTP/1.1; gateway on loopback h2c; telemetry %s; upstream rate limit %s;\n"+
		"           gateway clients: connect-go gRPC over h2c, %s, per-stream receive window %s;\n"+
		"           reference: net/http + encoding/json calling the simulator directly, MaxResults=100, V3-signed\n",
		o.telemetry, qps, gzip, window)
	if slices.Contains(o.scenarios, 7) {
		fmt.Fprintln(w, "           scenario 7 has a setup of its own: the gateway in a process of its own at imagerecordsd's defaults (see its notes)")
	}
	if slices.Contains(o.scenarios, 10) {
		fmt.Fprintln(w, "           scenario 10 has a setup of its own: gateways at imagerecordsd's defaults in front of a simulated account quota (see its notes)")
	}
	fmt.Fprintf(w, "load:      %s (1, 5, 15 min load average at start; the machine is shared)\n", loadAverage())
}

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'$\\") {
			a = strconv.Quote(a)
		}
		out[i] = a
	}
	return out
}

// profiles starts the CPU profile and writes the allocation baseline, as
// the options ask; the returned function stops the one and writes the
// other.
func profiles(o options) (stop func() error, err error) {
	if o.memProfile != "" {
		if err := writeHeapProfile(o.memProfile + ".base"); err != nil {
			return nil, err
		}
	}
	var cpu *os.File
	if o.cpuProfile != "" {
		if cpu, err = os.Create(o.cpuProfile); err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(cpu); err != nil {
			cpu.Close()
			return nil, err
		}
	}
	return func() error {
		if cpu != nil {
			pprof.StopCPUProfile()
			if err := cpu.Close(); err != nil {
				return err
			}
		}
		if o.memProfile != "" {
			return writeHeapProfile(o.memProfile)
		}
		return nil
	}, nil
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	runtime.GC() // the profile shows allocations up to the last GC
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
