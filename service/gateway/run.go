package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/redisquota"
)

// Addrs are the addresses a running gateway bound.
type Addrs struct {
	API   string
	Admin string // empty without Config.AdminListen
}

// Run runs the gateway of cfg until ctx is done, then shuts it down
// gracefully (see [Gateway.Serve]). It writes JSON logs to stderr and, with
// Config.Simulate, a banner for a new user to stdout; ready, when not nil,
// learns the gateway and its bound addresses once it accepts connections. Telemetry
// follows the OTEL_* environment; credentials come from the standard
// Alibaba Cloud chain, or from the simulator. SIGHUP reloads what is
// reloadable ([Gateway.Reload]). It returns nil after a clean shutdown.
func Run(ctx context.Context, cfg Config, stdout, stderr io.Writer, ready func(*Gateway, Addrs)) error {
	hup := catchSIGHUP() // first: a SIGHUP during start-up is not fatal either
	defer hup.stop()
	logger := NewLogger(stderr, cfg.LogLevel)
	tel, err := NewTelemetry(ctx)
	if err != nil {
		return err
	}
	defer func() {
		// Flush what is buffered (the last spans of drained streams).
		flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), telemetryFlushTimeout)
		defer cancel()
		if err := tel.Shutdown(flushCtx); err != nil {
			logger.Warn("telemetry flush failed", slog.String("error", err.Error()))
		}
	}()

	var creds upstream.CredentialsProvider
	var sim *simulation
	describe := cfg.UpstreamEndpoint
	if cfg.Simulate {
		if sim, err = startSimulation(cfg, logger); err != nil {
			return err
		}
		defer sim.close()
		creds, describe = sim.credentials, "simulator "+sim.endpoint
		cfg.UpstreamEndpoint = sim.endpoint
	} else {
		lib, err := upstream.DefaultCredentials()
		if err != nil {
			return err
		}
		creds = lib
	}
	if describe == "" {
		describe = "https://ecd.<region>.aliyuncs.com"
	}
	client, closeUpstream := NewUpstream(cfg, creds, logger, tel)
	defer closeUpstream()
	g, err := New(cfg, client, logger, tel)
	if err != nil {
		return err
	}
	hup.reload(g)
	g.CheckCredentials(creds) // readiness: NOT_SERVING while no key resolves

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.Listen, err)
	}
	addrs := Addrs{API: ln.Addr().String()}
	var adminLn net.Listener
	if cfg.AdminListen != "" {
		if adminLn, err = net.Listen("tcp", cfg.AdminListen); err != nil {
			ln.Close()
			return fmt.Errorf("listening on %s: %w", cfg.AdminListen, err)
		}
		addrs.Admin = adminLn.Addr().String()
	}
	logger.Info("serving", slog.String("addr", addrs.API), slog.String("admin_addr", addrs.Admin),
		slog.String("signature", string(cfg.Signature)), slog.String("upstream", describe),
		slog.String("version", Version()))
	if sim != nil {
		sim.printBanner(stdout, addrs.API)
	}
	if ready != nil {
		ready(g, addrs)
	}
	return g.Serve(ctx, ln, adminLn)
}

// NewUpstream returns the upstream client of cfg, signing with creds: the
// one place where Config becomes client options, for the daemon, the
// benchmark and the tests alike, and the function that releases what the
// client holds (the shared budget's connections). extra options come last;
// tests use them for what no flag sets (a transport with injected faults,
// say).
func NewUpstream(cfg Config, creds upstream.CredentialsProvider, logger *slog.Logger, tel *Telemetry, extra ...upstream.Option) (*upstream.Client, func()) {
	opts := []upstream.Option{
		upstream.WithSignatureVersion(cfg.Signature),
		upstream.WithLogger(logger),
		upstream.WithTracerProvider(tel.TracerProvider),
		upstream.WithMeterProvider(tel.MeterProvider),
		upstream.WithRateLimit(cfg.UpstreamQPS, cfg.UpstreamBurst),
		upstream.WithAttemptTimeout(cfg.UpstreamAttemptTimeout),
		upstream.WithMaxWait(cfg.UpstreamMaxWait),
	}
	if cfg.UpstreamEndpoint != "" {
		opts = append(opts, upstream.WithEndpoint(cfg.UpstreamEndpoint))
	}
	release := func() {}
	if cfg.QuotaRedis != "" {
		budget, err := redisquota.New(cfg.QuotaRedis) // Validate checked the URL
		if err == nil {
			opts = append(opts, upstream.WithSharedBudget(budget, quotaAccount(cfg.QuotaKey, os.Getenv)))
			release = func() { _ = budget.Close() }
		}
	}
	return upstream.NewClient(creds, append(opts, extra...)...), release
}

// quotaAccount names the account in the shared budget's keys: key, else a
// hash of the role ARN of RRSA/OIDC credentials (the same for every
// replica, whatever STS session each holds), else "" (the client hashes
// the AccessKeyId).
func quotaAccount(key string, getenv func(string) string) string {
	if key != "" {
		return key
	}
	if arn := getenv("ALIBABA_CLOUD_ROLE_ARN"); arn != "" {
		sum := sha256.Sum256([]byte("imagerecords role\x00" + arn))
		return hex.EncodeToString(sum[:8])
	}
	return ""
}

// sighup receives SIGHUP from the moment catchSIGHUP returns until stop,
// so the signal's default action (ending the process) never applies.
type sighup struct {
	signals  chan os.Signal
	done     chan struct{}
	finished chan struct{} // closed when the reload loop ended; nil before it began
}

func catchSIGHUP() *sighup {
	h := &sighup{signals: make(chan os.Signal, 1), done: make(chan struct{})}
	signal.Notify(h.signals, syscall.SIGHUP)
	return h
}

// reload calls g.Reload on every SIGHUP (one that came during start-up
// too) until stop. Reload logs what it did.
func (h *sighup) reload(g *Gateway) {
	h.finished = make(chan struct{})
	go func() {
		defer close(h.finished)
		for {
			select {
			case <-h.done:
				return
			case <-h.signals:
				_ = g.Reload()
			}
		}
	}()
}

// stop stops receiving SIGHUP and waits for a reload in progress.
func (h *sighup) stop() {
	signal.Stop(h.signals)
	close(h.done)
	if h.finished != nil {
		<-h.finished
	}
}
