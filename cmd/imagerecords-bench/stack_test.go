package main

import (
	"slices"
	"testing"

	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
)

// TestBenchRunsTheShippedChain: the benchmark's gateway has the handler
// chain (interceptors, handler options, reflection) that imagerecordsd
// builds from the same flags, so its figures are the shipped gateway's.
func TestBenchRunsTheShippedChain(t *testing.T) {
	t.Parallel()
	o, err := parseFlags(nil, t.Output())
	if err != nil {
		t.Fatal(err)
	}
	for _, telemetry := range []string{telemetryNoop, telemetrySDK} {
		o.telemetry = telemetry
		st, err := o.stack(nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		bench := st.Gateway.Chain()
		st.close()
		daemon := gatewaytest.Run(t, "--simulate", "--compress-min-bytes", "0").Gateway.Chain()
		if !slices.Equal(bench, daemon) {
			t.Errorf("telemetry %s: the bench builds\n%q\nimagerecordsd builds\n%q", telemetry, bench, daemon)
		}
		if len(daemon) < 5 {
			t.Errorf("the chain %q names too little to compare", daemon)
		}
	}
}
