package upstream_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/imagerecords/imagerecords/upstream"
)

// fakeDNS is a transport dialer that answers every dial as DNS does:
// "no such host" (NXDOMAIN) for the hosts in missing, a temporary
// failure for the others. It records the addresses dialled; no name is
// ever really resolved.
type fakeDNS struct {
	missing map[string]bool
	mu      sync.Mutex
	dialled []string
}

func (f *fakeDNS) dial(_ context.Context, network, addr string) (net.Conn, error) {
	f.mu.Lock()
	f.dialled = append(f.dialled, addr)
	f.mu.Unlock()
	host, _, _ := net.SplitHostPort(addr)
	dnsErr := &net.DNSError{Name: host, Err: "server misbehaving", IsTemporary: true}
	if f.missing[host] {
		dnsErr = &net.DNSError{Name: host, Err: "no such host", IsNotFound: true}
	}
	return nil, &net.OpError{Op: "dial", Net: network, Err: dnsErr}
}

func TestRegionWithoutEndpointIsNeverRetried(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name       string
		region     string
		endpoint   string // "" for the regional endpoint
		wantRegion bool   // an *UnknownRegionError, one attempt
	}{
		{"typo in the region", "cn-hangzou", "", true},
		{"DNS failing for a real region", "cn-hangzhou", "", false},
		// With an endpoint of its own the host does not depend on the
		// region: a host that does not resolve is the operator's network.
		{"endpoint set by the operator", "cn-hangzou", "https://ecd.vpc-proxy.invalid", false},
	}
	for _, tc := range testCases {
		dns := &fakeDNS{missing: map[string]bool{"ecd.cn-hangzou.aliyuncs.com": true, "ecd.vpc-proxy.invalid": true}}
		transport := upstream.NewTransport()
		transport.DialContext = dns.dial
		opts := []upstream.Option{upstream.WithTransport(transport), upstream.WithRetryPolicy(fastRetry(4))}
		if tc.endpoint != "" {
			opts = append(opts, upstream.WithEndpoint(tc.endpoint))
		}
		c := upstream.NewClient(staticCreds(longKey), opts...)
		_, err := c.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: tc.region, DesktopID: "ecd-x"})
		regionErr, isRegion := errors.AsType[*upstream.UnknownRegionError](err)
		attempts := len(dns.dialled)
		if isRegion != tc.wantRegion {
			t.Errorf("%s: %v; want an UnknownRegionError: %v", tc.name, err, tc.wantRegion)
			continue
		}
		if !tc.wantRegion {
			if attempts != 4 {
				t.Errorf("%s: %d attempts, want 4 (a network failure is retried)", tc.name, attempts)
			}
			continue
		}
		if attempts != 1 {
			t.Errorf("%s: %d attempts, want 1", tc.name, attempts)
		}
		if regionErr.Region != tc.region || regionErr.Host != "ecd.cn-hangzou.aliyuncs.com" || !strings.Contains(err.Error(), `"cn-hangzou"`) {
			t.Errorf("%s: %+v (%v)", tc.name, regionErr, err)
		}
	}
}
