package gateway

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// simulation is the embedded ECD simulator of --simulate: a real HTTP
// server on a loopback port, verifying the gateway's signatures made with a
// key pair generated for this run.
type simulation struct {
	endpoint    string
	credentials upstream.StaticCredentials
	desktops    []ecdsim.Desktop
	server      *http.Server
}

// simulatedRegion is the region the banner's examples use. The simulator
// serves its desktops in every ECD region of ecdsim.DefaultRegions and
// answers InvalidRegionId for any other, as ECD does.
const simulatedRegion = "cn-hangzhou"

// startSimulation starts the simulator of cfg's --simulate-* settings.
func startSimulation(cfg Config, logger *slog.Logger) (*simulation, error) {
	seed := cfg.SimulateSeed
	creds := upstream.StaticCredentials{
		AccessKeyID:     "LTAIsim" + rand.Text()[:12],
		AccessKeySecret: rand.Text(),
	}
	desktops := ecdsim.DefaultDesktops(seed)
	for i := range min(cfg.SimulateLiveDesktops, len(desktops)) {
		desktops[i].Live = true
	}
	sim, err := ecdsim.New(ecdsim.Config{
		Seed:     seed,
		Desktops: desktops,
		Keys:     []ecdsim.Key{{AccessKeyID: creds.AccessKeyID, AccessKeySecret: creds.AccessKeySecret}},
		Faults:   cfg.SimulateFaults,
		Live:     cfg.SimulateLive,
		Order:    cfg.SimulateOrder,
		Quota:    cfg.SimulateQuota,
	})
	if err != nil {
		return nil, fmt.Errorf("starting the simulator: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("starting the simulator: %w", err)
	}
	s := &simulation{
		endpoint:    "http://" + ln.Addr().String(),
		credentials: creds,
		desktops:    sim.Desktops(),
		server:      &http.Server{Handler: sim, ReadHeaderTimeout: 10 * time.Second},
	}
	go func() {
		if err := s.server.Serve(ln); err != nil && err != http.ErrServerClosed {
			logger.Error("simulator stopped", slog.String("error", err.Error()))
		}
	}()
	ids := make([]string, len(s.desktops))
	for i, d := range s.desktops {
		ids[i] = d.ID
	}
	logger.Info("simulator started", slog.String("endpoint", s.endpoint), slog.Int64("seed", seed),
		slog.String("region", simulatedRegion), slog.Any("desktop_ids", ids), slog.String("order", cfg.SimulateOrder.String()),
		slog.Int("live_desktops", cfg.SimulateLiveDesktops))
	return s, nil
}

func (s *simulation) close() {
	ctx, cancel := context.WithTimeout(context.Background(), simulatorStopTimeout)
	defer cancel()
	_ = s.server.Shutdown(ctx)
}

// printBanner tells a new user what to try.
func (s *simulation) printBanner(w io.Writer, addr string) {
	// A wildcard listener (the image's 0.0.0.0:8080) is tried on loopback.
	if host, port, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			addr = net.JoinHostPort("127.0.0.1", port)
		}
	}
	fmt.Fprintf(w, "imagerecordsd is serving on http://%s, answering from the embedded ECD simulator at %s.\n\n", addr, s.endpoint)
	fmt.Fprintf(w, "Sample desktops (region %s):\n", simulatedRegion)
	for _, d := range s.desktops {
		live := ""
		if d.Live {
			live = "  (live: image changes start, run and settle while the gateway runs)"
		}
		fmt.Fprintf(w, "  %s  %5d records%s\n", d.ID, d.Records, live)
	}
	if len(s.desktops) == 0 {
		return
	}
	d := s.desktops[0]
	fmt.Fprintf(w, "\nTry:\n  curl -sS -X POST http://%s/ecd.imagerecords.v1.ImageRecordsService/ListImageModifiedRecords \\\n"+
		"    -H 'Content-Type: application/json' \\\n    -d '{\"regionId\":\"%s\",\"desktopId\":\"%s\",\"pageSize\":3}'\n\n",
		addr, simulatedRegion, d.ID)
}
