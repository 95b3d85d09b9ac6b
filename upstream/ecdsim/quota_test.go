package ecdsim_test

import (
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// throttleBody is the exact JSON of a Throttling.User answer with the
// given RequestId, the same for the quota and for injected throttling.
func throttleBody(requestID string) string {
	return `{"RequestId":"` + requestID + `","HostId":"ecd.cn-hangzhou.aliyuncs.com","Code":"Throttling.User",` +
		`"Message":"Request was denied due to user flow control.",` +
		`"Recommend":"https://api.aliyun.com/troubleshoot?q=Throttling.User&product=ecd"}`
}

func TestQuotaAdmitsBurstPlusRate(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name     string
		quota    ecdsim.Quota
		step     time.Duration
		steps    int
		perStep  int // requests sent at each instant: more than a step refills, so the bucket never caps a refill
		admitted int // burst + qps·(step·steps)
	}{
		{"4/s burst 3 over 2s", ecdsim.Quota{QPS: 4, Burst: 3}, 50 * time.Millisecond, 40, 2, 3 + 8},
		// A step refills 0.3 tokens, inexact in binary; the bucket is drained
		// below one token at each step, so its size never caps the refill.
		{"3/s burst 2 over 3s, inexact steps", ecdsim.Quota{QPS: 3, Burst: 2}, 100 * time.Millisecond, 30, 2, 2 + 9},
		// Ten refills of 0.1 token add up to 0.9999999999999999 in binary.
		{"10/s burst 2 over 1s, tenth-token steps", ecdsim.Quota{QPS: 10, Burst: 2}, 10 * time.Millisecond, 100, 2, 2 + 10},
		{"0.5/s default burst over 10s", ecdsim.Quota{QPS: 0.5}, 250 * time.Millisecond, 40, 1, 1 + 5},
		{"100/s burst 20 over 994ms", ecdsim.Quota{QPS: 100, Burst: 20}, 7 * time.Millisecond, 142, 3, 20 + 99},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clock := newFakeClock(fixedNow)
			sim := newSim(t, ecdsim.Config{Seed: 1, Now: clock.Now, Quota: tc.quota})
			id := desktopWith(t, sim, 7)
			admitted, throttled := 0, 0
			for step := 0; step <= tc.steps; step++ {
				for k := range tc.perStep {
					// Both keys share the account's bucket.
					key := []ecdsim.Key{longKey, stsKey}[k%2]
					w := serve(sim, call{key: key, ts: clock.Now(), params: params(id)}.request(t))
					switch w.Code {
					case http.StatusOK:
						admitted++
					case http.StatusBadRequest:
						throttled++
						if got, want := w.Body.String(), throttleBody(w.Header().Get("X-Acs-Request-Id")); got != want {
							t.Fatalf("throttle body\n got %s\nwant %s", got, want)
						}
						if h := w.Header().Get("x-ratelimit-user-api"); h != "" {
							t.Fatalf("x-ratelimit-user-api %q without Quota.Hint", h)
						}
					default:
						t.Fatalf("status %d: %s", w.Code, w.Body)
					}
				}
				if step < tc.steps {
					clock.Add(tc.step)
				}
			}
			if admitted != tc.admitted {
				t.Fatalf("admitted %d calls over %v, want %d", admitted, time.Duration(tc.steps)*tc.step, tc.admitted)
			}
			want := ecdsim.Stats{Requests: int64(admitted + throttled), Pages: int64(admitted), QuotaThrottled: int64(throttled)}
			if st := sim.Stats(); st != want {
				t.Fatalf("stats %+v, want %+v", st, want)
			}
			if n := sim.DesktopCalls(id); n != int64(admitted) {
				t.Fatalf("DesktopCalls %d: throttled requests reached the desktop", n)
			}
		})
	}
}

func TestQuotaThrottleMatchesInjectedThrottle(t *testing.T) {
	t.Parallel()
	quota := newSim(t, ecdsim.Config{Seed: 1, Quota: ecdsim.Quota{QPS: 1, Burst: 1}})
	injected := newSim(t, ecdsim.Config{Seed: 1, Faults: ecdsim.Faults{ThrottleFraction: 1}})
	id := desktopWith(t, quota, 7)
	mustPage(t, quota, call{key: longKey, params: params(id)})
	a := serve(quota, call{key: longKey, params: params(id)}.request(t))
	b := serve(injected, call{key: longKey, params: params(id)}.request(t))
	strip := func(body, reqID string) string { return strings.Replace(body, reqID, "<id>", 1) }
	if a.Code != b.Code || strip(a.Body.String(), a.Header().Get("X-Acs-Request-Id")) != strip(b.Body.String(), b.Header().Get("X-Acs-Request-Id")) {
		t.Fatalf("quota throttle %d %s\ninjected throttle %d %s", a.Code, a.Body, b.Code, b.Body)
	}
	if st := quota.Stats(); st.QuotaThrottled != 1 || st.Throttled != 0 {
		t.Fatalf("quota stats %+v", st)
	}
	if st := injected.Stats(); st.QuotaThrottled != 0 || st.Throttled != 1 {
		t.Fatalf("injected stats %+v", st)
	}
}

func TestQuotaHint(t *testing.T) {
	t.Parallel()
	clock := newFakeClock(fixedNow)
	sim := newSim(t, ecdsim.Config{Seed: 1, Now: clock.Now, Quota: ecdsim.Quota{QPS: 4, Burst: 2, Hint: true}})
	id := desktopWith(t, sim, 7)
	send := func() (int, string) {
		w := serve(sim, call{key: longKey, ts: clock.Now(), params: params(id)}.request(t))
		return w.Code, w.Header().Get("x-ratelimit-user-api")
	}
	for range 2 {
		if code, h := send(); code != http.StatusOK || h != "" {
			t.Fatalf("admitted call: %d, header %q", code, h)
		}
	}
	// The bucket is empty: a token is 250 ms away, then 150 ms after
	// 100 ms, then 1 ms (rounded up) after 249.9 ms.
	for _, tc := range []struct {
		advance time.Duration
		want    string
	}{
		{0, "Limit:2,Remain:0,TimeLeft:250"},
		{100 * time.Millisecond, "Limit:2,Remain:0,TimeLeft:150"},
		{149*time.Millisecond + 900*time.Microsecond, "Limit:2,Remain:0,TimeLeft:1"},
	} {
		clock.Add(tc.advance)
		if code, h := send(); code != http.StatusBadRequest || h != tc.want {
			t.Fatalf("after %v more: %d, header %q, want 400 and %q", tc.advance, code, h, tc.want)
		}
	}
	clock.Add(100 * time.Microsecond)
	if code, _ := send(); code != http.StatusOK {
		t.Fatalf("a token was due: %d", code)
	}
}

func TestSetQuota(t *testing.T) {
	t.Parallel()
	clock := newFakeClock(fixedNow)
	sim := newSim(t, ecdsim.Config{Seed: 1, Now: clock.Now})
	id := desktopWith(t, sim, 7)
	codes := func(n int) string {
		var b strings.Builder
		for range n {
			fmt.Fprint(&b, serve(sim, call{key: longKey, ts: clock.Now(), params: params(id)}.request(t)).Code, " ")
		}
		return b.String()
	}
	if got := codes(5); got != "200 200 200 200 200 " {
		t.Fatalf("no quota: %s", got)
	}
	sim.SetQuota(ecdsim.Quota{QPS: 1, Burst: 2})
	if got := sim.Quota(); got != (ecdsim.Quota{QPS: 1, Burst: 2}) {
		t.Fatalf("Quota() = %+v", got)
	}
	if got := codes(3); got != "200 200 400 " {
		t.Fatalf("quota 1/s burst 2: %s", got)
	}
	// Setting a quota fills the bucket again.
	sim.SetQuota(ecdsim.Quota{QPS: 2.5})
	if got := sim.Quota(); got != (ecdsim.Quota{QPS: 2.5, Burst: 3}) {
		t.Fatalf("Quota() = %+v, want the burst resolved to 3", got)
	}
	if got := codes(4); got != "200 200 200 400 " {
		t.Fatalf("quota 2.5/s default burst: %s", got)
	}
	// Out-of-range rates mean no quota.
	for _, q := range []ecdsim.Quota{{}, {QPS: -1}, {QPS: math.NaN()}, {QPS: math.Inf(1)}} {
		sim.SetQuota(q)
		if got := codes(4); got != "200 200 200 200 " || sim.Quota() != (ecdsim.Quota{}) {
			t.Fatalf("quota %+v: %s, Quota() %+v", q, got, sim.Quota())
		}
	}
}

func TestQuotaAfterAuthentication(t *testing.T) {
	t.Parallel()
	sim := newSim(t, ecdsim.Config{Seed: 1, Quota: ecdsim.Quota{QPS: 1, Burst: 1}})
	id := desktopWith(t, sim, 7)
	// A request that fails authentication, or names another action, takes
	// no token.
	mustFail(t, sim, call{key: longKey, secret: "wrong", params: params(id)}.request(t), 400, "SignatureDoesNotMatch")
	mustFail(t, sim, call{key: longKey, action: "DescribeDesktops", params: params(id)}.request(t), 404, "InvalidAction.NotFound")
	mustPage(t, sim, call{key: longKey, params: params(id)})
	// The quota comes before the parameters: a bad request takes a token
	// too, and is throttled once the bucket is empty.
	mustFail(t, sim, call{key: longKey, params: params(id, "MaxResults", "0")}.request(t), 400, "Throttling.User")
}
