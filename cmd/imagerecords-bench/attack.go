package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service/gateway"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// Scenario 9 runs the attacks of issue 14 together against the gateway in
// a process of its own, at its production defaults with bearer tokens and
// a token key file, while a legitimate caller lists and streams; it
// reports the legitimate caller's success and latency and the gateway
// process's RSS before, at its peak, and after the attack.

// serveGatewayCommand, as the first argument, makes this program the
// gateway of scenarios 5 and 9 (gateway.Run, as imagerecordsd runs it,
// with the remaining arguments as its flags), so that those scenarios
// measure the gateway's CPU time and RSS apart from the callers'.
const serveGatewayCommand = "serve-gateway"

// serveGateway is the gateway process of scenarios 5 and 9.
func serveGateway(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	cfg, err := gateway.ParseArgs(args, os.LookupEnv, os.Stderr)
	if err == nil {
		var addr string
		if addr, err = serveProfiles(os.Getenv(profileListenEnv)); addr != "" {
			fmt.Fprintf(os.Stderr, "{\"msg\":\"pprof\",\"pprof_addr\":%q}\n", addr)
		}
	}
	if err == nil {
		err = gateway.Run(ctx, cfg, io.Discard, os.Stderr, nil)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "serve-gateway:", err)
		return 1
	}
	return 0
}

// The attackers' loopback addresses (Linux routes 127.0.0.0/8 to lo), one
// peer each; the legitimate caller is 127.0.0.1.
const (
	idleFloodPeers = 20 // 127.0.0.10..29: past the global connection cap together
	stallPeers     = 10 // 127.0.0.30..39, each with a token of its own
	watchPeer      = "127.0.0.40"
	bombPeer       = "127.0.0.41"
	insiderPeer    = "127.0.0.42" // holds a token: authenticated bombs, forged page tokens
	slowBodyPeer   = "127.0.0.43"
	legitPeer      = "127.0.0.1"
)

const (
	// h2cPreface is an HTTP/2 client's preface and an empty SETTINGS frame.
	h2cPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
	// slowRequest is an HTTP/1.1 request whose body never completes.
	slowRequest = "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
)

// attackCounts are what the attackers saw.
type attackCounts struct {
	idle, slow                           rawCounts
	stallOpened, stallRefused, stallCut  atomic.Int64
	stallOther                           atomic.Int64
	watchRefused, watchOther             atomic.Int64
	bombRefused, bombOther               atomic.Int64
	forgedRefused, forgedOther           atomic.Int64
	sighups                              atomic.Int64
	legitListOK, legitListFailed         atomic.Int64
	legitStreamOK, legitStreamFailed     atomic.Int64
	firstListError, firstStreamError     atomic.Pointer[string]
	firstStallOther, firstBombOther      atomic.Pointer[string]
	firstForgedOther                     atomic.Pointer[string]
	legitListLatency, legitStreamLatency latencies
}

// gatewayProcess is the gateway of scenarios 5 and 9.
type gatewayProcess struct {
	cmd         *exec.Cmd
	addr, admin string
	pprof       string // with profileListenEnv: net/http/pprof's address
	stderr      *bytes.Buffer
	mu          sync.Mutex
}

// startGatewayProcess starts "imagerecords-bench serve-gateway args" with
// this process's environment less the gateway's variables, plus env.
func startGatewayProcess(args []string, env ...string) (*gatewayProcess, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	p := &gatewayProcess{cmd: exec.Command(exe, append([]string{serveGatewayCommand}, args...)...), stderr: &bytes.Buffer{}}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, gateway.EnvPrefix) {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	pipe, err := p.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var line struct {
				Msg       string
				Addr      string `json:"addr"`
				AdminAddr string `json:"admin_addr"`
				PprofAddr string `json:"pprof_addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "pprof" {
				p.pprof = line.PprofAddr // logged before "serving"
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "serving" {
				p.addr, p.admin = line.Addr, line.AdminAddr
				close(ready)
			}
			if !bytes.Contains(sc.Bytes(), []byte(`"msg":"rpc"`)) { // keep all but the access lines
				p.mu.Lock()
				p.stderr.Write(append(sc.Bytes(), '\n'))
				p.mu.Unlock()
			}
		}
	}()
	select {
	case <-ready:
		return p, nil
	case <-time.After(60 * time.Second):
		_ = p.cmd.Process.Kill()
		return nil, fmt.Errorf("the gateway process did not start:\n%s", p.logs())
	}
}

func (p *gatewayProcess) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// rss reads the gateway process's resident set size (VmRSS) and its peak
// (VmHWM).
func (p *gatewayProcess) rss() (now, peak uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(b)) {
		k, v, _ := strings.Cut(line, ":")
		kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			now = kb << 10
		case "VmHWM":
			peak = kb << 10
		}
	}
	return now, peak, nil
}

// refusals scrapes the gateway's imagerecords_refusals_total by reason.
func (p *gatewayProcess) refusals() string {
	res, err := http.Get("http://" + p.admin + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer res.Body.Close()
	var out []string
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "imagerecords_refusals_total{") {
			continue
		}
		_, after, _ := strings.Cut(line, `reason="`)
		reason, _, _ := strings.Cut(after, `"`)
		fields := strings.Fields(line)
		out = append(out, reason+" "+fields[len(fields)-1])
	}
	return strings.Join(out, ", ")
}

func (p *gatewayProcess) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	return p.cmd.Wait()
}

// bearerTransport adds a bearer token to every request.
type bearerTransport struct {
	http.RoundTripper
	token string
}

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.RoundTripper.RoundTrip(r)
}

// h2cClient is an h2c client from ip that opens one connection and
// keeps its streams on it (up to the gateway's 250 per connection): it
// makes one health Check first, so that concurrent calls find that
// connection instead of each dialing one. window > 0 sets its per-stream
// receive window; token, when not empty, goes with every request.
func h2cClient(ctx context.Context, url, ip, token string, window int) *http.Client {
	hc := gatewaytest.H2CFrom(ip, func(t *http.Transport) {
		t.HTTP2 = &http.HTTP2Config{StrictMaxConcurrentRequests: true}
		if window > 0 {
			t.HTTP2.MaxReceiveBufferPerStream = window
		}
	})
	if token != "" {
		hc.Transport = bearerTransport{hc.Transport, token}
	}
	_, _ = grpchealth.NewClient(hc, url, connect.WithGRPC()).Check(ctx, &grpchealth.CheckRequest{})
	return hc
}

func scenarioAttack(o options, log io.Writer) (*report, error) {
	dir, err := os.MkdirTemp("", "imagerecords-attack")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	// The legitimate caller and each insider (who has a token of its own
	// and abuses it) have their own token.
	token, insiderToken := rand.Text(), rand.Text()
	tokensFile := fmt.Sprintf("legit %s\ninsider %s\n", token, insiderToken)
	stallTokens := make([]string, stallPeers)
	for i := range stallTokens {
		stallTokens[i] = rand.Text()
		tokensFile += fmt.Sprintf("stall-%d %s\n", i, stallTokens[i])
	}
	tokens, keys := filepath.Join(dir, "tokens"), filepath.Join(dir, "token-keys")
	if err := os.WriteFile(tokens, []byte(tokensFile), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(keys, []byte(rand.Text()+rand.Text()+"\n"), 0o600); err != nil {
		return nil, err
	}
	gw, err := startGatewayProcess([]string{"--simulate", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--auth-tokens-file", tokens, "--token-key-file", keys})
	if err != nil {
		return nil, err
	}
	defer func() { _ = gw.stop() }()
	url := "http://" + gw.addr
	desktops := ecdsim.DefaultDesktops(1)
	legitHTTP := h2cClient(context.Background(), url, legitPeer, token, 0)
	defer legitHTTP.CloseIdleConnections()
	legit := imagerecordsv1connect.NewImageRecordsServiceClient(legitHTTP, url, connect.WithGRPC())

	// Warm up, then the baseline.
	for range 20 {
		if _, err := gatewayList(context.Background(), legit, desktops[0].ID, 10); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	settleFor(3 * time.Second)
	baseline, _, err := gw.rss()
	if err != nil {
		return nil, err
	}

	var c attackCounts
	ctx, cancel := context.WithTimeout(context.Background(), o.s9Duration)
	defer cancel()
	var wg sync.WaitGroup
	fmt.Fprintf(log, "  attacking for %v ...\n", o.s9Duration)
	start := time.Now()
	for i := range idleFloodPeers {
		wg.Go(func() { holdConnections(ctx, gw.addr, fmt.Sprintf("127.0.0.%d", 10+i), h2cPreface, 300, &c.idle) })
	}
	for i, tok := range stallTokens {
		wg.Go(func() { stalledStreams(ctx, url, fmt.Sprintf("127.0.0.%d", 30+i), tok, 110, desktops, &c) })
	}
	wg.Go(func() { watchFlood(ctx, url, 10_000, &c) })
	wg.Go(func() { bombs(ctx, url, bombPeer, "", 4, &c) })
	wg.Go(func() { bombs(ctx, url, insiderPeer, insiderToken, 2, &c) })
	wg.Go(func() { forgedTokens(ctx, url, insiderToken, 2, desktops[0].ID, &c) })
	wg.Go(func() { holdConnections(ctx, gw.addr, slowBodyPeer, slowRequest, 100, &c.slow) })
	wg.Go(func() { sighups(ctx, gw.cmd.Process, &c) })
	for range 4 {
		wg.Go(func() { legitLists(ctx.Done(), legit, desktops, &c) })
	}
	for range 2 {
		wg.Go(func() { legitStreams(ctx.Done(), legit, desktops[0], &c) })
	}
	peakDuring := uint64(0)
	sampler := time.NewTicker(time.Second)
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-sampler.C:
			if now, _, err := gw.rss(); err == nil {
				peakDuring = max(peakDuring, now)
			}
		}
	}
	sampler.Stop()
	wg.Wait()
	attackTime := time.Since(start)
	_, peak, err := gw.rss()
	if err != nil {
		return nil, err
	}

	// After: the attackers are gone (every connection closed); the
	// gateway gets o.s9After to return to its baseline.
	fmt.Fprintf(log, "  attack over; waiting %v ...\n", o.s9After)
	for waited := time.Duration(0); waited < o.s9After; waited += 10 * time.Second {
		time.Sleep(min(10*time.Second, o.s9After-waited))
		if now, _, err := gw.rss(); err == nil {
			fmt.Fprintf(log, "  RSS %v after: %.1f MiB\n", waited+min(10*time.Second, o.s9After-waited), float64(now)/(1<<20))
		}
	}
	after, _, err := gw.rss()
	if err != nil {
		return nil, err
	}
	refusals := gw.refusals()
	if err := gw.stop(); err != nil {
		return nil, fmt.Errorf("the gateway exited with %w after the attack:\n%s", err, gw.logs())
	}

	rep := &report{}
	add := func(metric string, u unit, suffix string, v float64, target string, ok verdict) {
		rep.add(row{scenario: 9, metric: metric, unit: u, suffix: suffix, measured: v, reference: none(), target: target, verdict: ok})
	}
	lists := c.legitListOK.Load() + c.legitListFailed.Load()
	streams := c.legitStreamOK.Load() + c.legitStreamFailed.Load()
	listRate := 100 * float64(c.legitListOK.Load()) / float64(max(lists, 1))
	streamRate := 100 * float64(c.legitStreamOK.Load()) / float64(max(streams, 1))
	listLat := c.legitListLatency.sorted()
	streamLat := c.legitStreamLatency.sorted()
	add(fmt.Sprintf("legitimate List calls succeeded (%d calls)", lists), unitFloat, "%", listRate, "100%", check(listRate == 100))
	add("legitimate List p50", unitDuration, "", seconds(percentile(listLat, 50)), "", noTarget)
	add("legitimate List p99", unitDuration, "", seconds(percentile(listLat, 99)), "≤ 1 s", check(percentile(listLat, 99) <= time.Second))
	add(fmt.Sprintf("legitimate streams of %d records succeeded (%d streams)", desktops[0].Records, streams), unitFloat, "%", streamRate, "100%", check(streamRate == 100))
	add("legitimate stream p99 (13 pages at the shared 100/s)", unitDuration, "", seconds(percentile(streamLat, 99)), "", noTarget)
	add("gateway RSS before the attack", unitBytes, "", float64(baseline), "", noTarget)
	top := max(peak, peakDuring)
	add("gateway RSS peak (VmHWM)", unitBytes, "", float64(top), "≤ 384 MiB (¾ of a 512 MiB pod)", check(top <= 384<<20))
	add(fmt.Sprintf("gateway RSS %v after the attack", o.s9After), unitBytes, "", float64(after), "≤ ¼ of the peak", check(after <= top/4))
	rep.note("attack time %.1f s; 20 peers × 300 idle h2c connections (admitted %d, closed by the gateway %d, refused %d); "+
		"10 peers × 110 never-reading streams held 35 s each, past the cap of 100 (opened %d; then found refused %d, cut %d; other %d); "+
		"10,000 unauthenticated health Watch slots (refused %d, other %d); gzip bombs (refused %d, other %d); "+
		"forged page tokens (refused %d, other %d); 100 request bodies that never complete (answered and closed after a median %.1f s: %d; refused %d); SIGHUP %d times",
		attackTime.Seconds(), c.idle.opened.Load(), c.idle.closed.Load(), c.idle.refused.Load(),
		c.stallOpened.Load(), c.stallRefused.Load(), c.stallCut.Load(), c.stallOther.Load(),
		c.watchRefused.Load(), c.watchOther.Load(), c.bombRefused.Load(), c.bombOther.Load(),
		c.forgedRefused.Load(), c.forgedOther.Load(), percentile(c.slow.held.sorted(), 50).Seconds(), c.slow.closed.Load(), c.slow.refused.Load(), c.sighups.Load())
	if e := c.firstListError.Load(); e != nil {
		rep.note("first legitimate List failure: %s", *e)
	}
	if e := c.firstStreamError.Load(); e != nil {
		rep.note("first legitimate stream failure: %s", *e)
	}
	for what, p := range map[string]*atomic.Pointer[string]{"stalled stream": &c.firstStallOther, "bomb": &c.firstBombOther, "forged token": &c.firstForgedOther} {
		if e := p.Load(); e != nil {
			rep.note("first unexpected %s outcome: %s", what, *e)
		}
	}
	rep.note("gateway refusals by reason (imagerecords_refusals_total): %s", refusals)
	rep.note("the gateway runs in its own process (this program's %s mode: gateway.Run, as imagerecordsd) at its defaults, "+
		"with --simulate, --auth-tokens-file and --token-key-file; RSS is that process's", serveGatewayCommand)
	return rep, nil
}

// settleFor collects garbage and waits, so the next RSS reading is calm.
func settleFor(d time.Duration) {
	settle()
	time.Sleep(d)
}

func noteError(p *atomic.Pointer[string], err error) {
	s := err.Error()
	p.CompareAndSwap(nil, &s)
}

// rawCounts are what connections held by holdConnections saw.
type rawCounts struct {
	opened, refused, closed atomic.Int64
	held                    latencies // from the greeting to the gateway's close
}

// holdConnections keeps n connections from ip that send greeting and
// then nothing, opening a new one a second after the gateway closes or
// refuses one.
func holdConnections(ctx context.Context, addr, ip, greeting string, n int, c *rawCounts) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for ctx.Err() == nil {
				conn, err := d.DialContext(ctx, "tcp", addr)
				if err != nil {
					pause(ctx, time.Second)
					continue
				}
				stop := context.AfterFunc(ctx, func() { conn.Close() })
				start := time.Now()
				_, _ = io.WriteString(conn, greeting)
				first := make([]byte, 12)
				k, _ := io.ReadFull(conn, first)
				if bytes.HasPrefix(first[:k], []byte("HTTP/1.1 503")) {
					c.refused.Add(1)
				} else {
					c.opened.Add(1)
					_, _ = io.Copy(io.Discard, conn)
					if ctx.Err() == nil {
						c.closed.Add(1)
						c.held.add(time.Since(start))
					}
				}
				stop()
				conn.Close()
				pause(ctx, time.Second)
			}
		})
	}
	wg.Wait()
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// stalledStreams keeps n streams from ip (with token) that never read (a
// 1-byte window), 250 to a connection: each is held 35 s (past the 30 s
// stall timeout), checked for the cut, and opened again.
func stalledStreams(ctx context.Context, url, ip, token string, n int, desktops []ecdsim.Desktop, c *attackCounts) {
	var wg sync.WaitGroup
	for first := 0; first < n; first += 250 {
		hc := h2cClient(ctx, url, ip, token, 1)
		defer hc.CloseIdleConnections()
		client := imagerecordsv1connect.NewImageRecordsServiceClient(hc, url, connect.WithGRPC())
		for i := first; i < min(first+250, n); i++ {
			wg.Go(func() {
				for ctx.Err() == nil {
					sctx, cancel := context.WithCancel(ctx)
					s, err := client.StreamImageModifiedRecords(sctx, connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
						RegionId: region, DesktopId: desktops[i%len(desktops)].ID,
					}))
					if err != nil {
						cancel()
						c.stallOther.Add(1)
						pause(ctx, time.Second)
						continue
					}
					c.stallOpened.Add(1)
					pause(ctx, 35*time.Second)
					if ctx.Err() == nil && !s.Receive() {
						switch connect.CodeOf(s.Err()) {
						case connect.CodeResourceExhausted:
							c.stallRefused.Add(1)
						case connect.CodeInternal:
							c.stallCut.Add(1)
						default:
							c.stallOther.Add(1)
							noteError(&c.firstStallOther, s.Err())
						}
					}
					cancel()
					_ = s.Close()
				}
			})
		}
	}
	wg.Wait()
}

// watchFlood opens n unauthenticated health Watch streams, each again
// five seconds after it ended.
func watchFlood(ctx context.Context, url string, n int, c *attackCounts) {
	var wg sync.WaitGroup
	for i := range n {
		if i%250 == 0 { // a connection per 250 streams, as one client would
			hc := h2cClient(ctx, url, watchPeer, "", 0)
			defer hc.CloseIdleConnections()
			health := grpchealth.NewClient(hc, url, connect.WithGRPC())
			for range min(250, n-i) {
				wg.Go(func() {
					for ctx.Err() == nil {
						wctx, cancel := context.WithCancel(ctx)
						ev := <-health.Watch(wctx, &grpchealth.CheckRequest{})
						if connect.CodeOf(ev.Err) == connect.CodeUnauthenticated {
							c.watchRefused.Add(1)
						} else if ctx.Err() == nil {
							c.watchOther.Add(1)
						}
						cancel()
						pause(ctx, 5*time.Second)
					}
				})
			}
		}
	}
	wg.Wait()
}

// bombs posts gzip bombs to List from ip, with token when not empty, from
// workers loops.
func bombs(ctx context.Context, url, ip, token string, workers int, c *attackCounts) {
	bomb := gatewaytest.GzipBomb(60 << 20)
	hc := h2cClient(ctx, url, ip, "", 0)
	defer hc.CloseIdleConnections()
	want := "16" // Unauthenticated
	if token != "" {
		want = "8" // ResourceExhausted
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/"+imagerecordsv1connect.ImageRecordsServiceName+"/ListImageModifiedRecords", bytes.NewReader(bomb))
				req.Header.Set("Content-Type", "application/grpc")
				req.Header.Set("Grpc-Encoding", "gzip")
				if token != "" {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				res, err := hc.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						c.bombOther.Add(1)
						noteError(&c.firstBombOther, err)
						pause(ctx, 100*time.Millisecond)
					}
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				status := res.Header.Get("Grpc-Status")
				if status == "" {
					status = res.Trailer.Get("Grpc-Status")
				}
				if status == want {
					c.bombRefused.Add(1)
				} else if ctx.Err() == nil {
					c.bombOther.Add(1)
					noteError(&c.firstBombOther, fmt.Errorf("HTTP %d grpc-status %q", res.StatusCode, status))
				}
			}
		})
	}
	wg.Wait()
}

// forgedTokens lists with made-up page tokens (the earlier unkeyed format
// with NextToken bytes of the caller's choice, and random bytes) from
// workers loops of an authenticated insider.
func forgedTokens(ctx context.Context, url, token string, workers int, desktop string, c *attackCounts) {
	hc := h2cClient(ctx, url, insiderPeer, token, 0)
	defer hc.CloseIdleConnections()
	client := imagerecordsv1connect.NewImageRecordsServiceClient(hc, url, connect.WithGRPC())
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				b := []byte{byte(1 + (i+w)%2), 0, 0, 0, 0, 0}
				b = append(b, "\x00\xff"+rand.Text()...)
				_, err := client.ListImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
					RegionId: region, DesktopId: desktop, PageToken: base64.RawURLEncoding.EncodeToString(b),
				}))
				if connect.CodeOf(err) == connect.CodeInvalidArgument {
					c.forgedRefused.Add(1)
				} else if ctx.Err() == nil {
					c.forgedOther.Add(1)
					noteError(&c.firstForgedOther, fmt.Errorf("%v", err))
				}
			}
		})
	}
	wg.Wait()
}

// sighups sends the gateway SIGHUP every two seconds.
func sighups(ctx context.Context, p *os.Process, c *attackCounts) {
	for ctx.Err() == nil {
		pause(ctx, 2*time.Second)
		if ctx.Err() == nil && p.Signal(syscall.SIGHUP) == nil {
			c.sighups.Add(1)
		}
	}
}

// legitLists lists pages, one call after another, each with a 5 s
// deadline of its own, until stop is closed.
func legitLists(stop <-chan struct{}, client imagerecordsv1connect.ImageRecordsServiceClient, desktops []ecdsim.Desktop, c *attackCounts) {
	for i := 0; !closed(stop); i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		start := time.Now()
		_, err := gatewayList(ctx, client, desktops[i%len(desktops)].ID, 10)
		cancel()
		if err == nil {
			c.legitListOK.Add(1)
			c.legitListLatency.add(time.Since(start))
		} else {
			c.legitListFailed.Add(1)
			noteError(&c.firstListError, err)
		}
	}
}

// legitStreams streams a whole desktop, one stream after another, each
// with a 60 s deadline of its own, until stop is closed.
func legitStreams(stop <-chan struct{}, client imagerecordsv1connect.ImageRecordsServiceClient, desktop ecdsim.Desktop, c *attackCounts) {
	for !closed(stop) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		start := time.Now()
		n, err := gatewayStream(ctx, client, desktop.ID, nil)
		cancel()
		if err == nil && n == desktop.Records {
			c.legitStreamOK.Add(1)
			c.legitStreamLatency.add(time.Since(start))
			continue
		}
		c.legitStreamFailed.Add(1)
		if err == nil {
			err = fmt.Errorf("%d of %d records", n, desktop.Records)
		}
		noteError(&c.firstStreamError, err)
	}
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
