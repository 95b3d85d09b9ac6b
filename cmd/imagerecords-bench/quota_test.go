package main

import (
	"strings"
	"testing"
	"time"
)

// TestQuotaScenarioRuns: scenario 10, made small (3 streams × 300 records
// against a quota of 50 calls/s, so that it takes seconds rather than a
// minute), runs all four deployments — 1 and 3 replicas, alone and with
// the shared budget in a real redis-server — and every stream of every run
// delivers every record exactly once. Its wall-time and throttling targets
// are for the full size and are not judged here.
func TestQuotaScenarioRuns(t *testing.T) {
	t.Parallel()
	o, err := parseFlags([]string{"-scenarios", "10", "-s10-streams", "3", "-s10-records", "300"}, t.Output())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var rep *report
	go func() {
		defer close(done)
		rep, err = scenarioQuota(o, t.Output())
	}()
	select {
	case <-done:
	case <-time.After(3 * time.Minute):
		t.Fatal("scenario 10 did not end within 3 minutes")
	}
	if err != nil {
		t.Fatal(err)
	}
	var complete []row
	for _, r := range rep.rows {
		if r.scenario != 10 {
			t.Errorf("row %q is numbered %d", r.metric, r.scenario)
		}
		if strings.HasPrefix(r.metric, "streams complete") {
			complete = append(complete, r)
		}
	}
	if len(complete) != len(quotaDeployments) {
		t.Fatalf("%d runs reported their streams, want %d (redis-server is needed: .ci/run installs it); rows:\n%v", len(complete), len(quotaDeployments), rep.rows)
	}
	for _, r := range complete {
		if r.verdict != met || r.measured != 3 {
			t.Errorf("%s: %v of 3 streams complete; notes: %q", r.metric, r.measured, rep.notes)
		}
	}
	if len(rep.rows) != 3*len(quotaDeployments) {
		t.Errorf("%d rows, want 3 per run:\n%v", len(rep.rows), rep.rows)
	}
}
