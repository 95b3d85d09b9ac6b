package upstream_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// Benchmarks of the upstream hot path: decoding a page, and one whole call
// against the simulator over loopback. Signing is benchmarked in package
// acs.
//
//	go test -run '^$' -bench . -benchmem ./upstream

const (
	benchKeyID     = "LTAI5tBenchmarkKey01"
	benchKeySecret = "bench-secret-0123456789abcdefghij"
	benchDesktop   = "ecd-bd53sfmysz8ir0001"
)

// benchSim serves a simulator with one desktop of n records on loopback.
func benchSim(b *testing.B, n int) (*ecdsim.Simulator, *httptest.Server) {
	b.Helper()
	sim, err := ecdsim.New(ecdsim.Config{
		Seed:     1,
		Desktops: []ecdsim.Desktop{{ID: benchDesktop, Records: n}},
		Keys:     []ecdsim.Key{{AccessKeyID: benchKeyID, AccessKeySecret: benchKeySecret}},
	})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(sim)
	b.Cleanup(srv.Close)
	return sim, srv
}

// benchClient is a client of endpoint with no-op telemetry.
func benchClient(endpoint string, opts ...upstream.Option) *upstream.Client {
	return upstream.NewClient(upstream.StaticCredentials{AccessKeyID: benchKeyID, AccessKeySecret: benchKeySecret},
		append([]upstream.Option{
			upstream.WithEndpoint(endpoint),
			upstream.WithTracerProvider(tracenoop.NewTracerProvider()),
			upstream.WithMeterProvider(metricnoop.NewMeterProvider()),
		}, opts...)...)
}

// bodyCapture is a transport that keeps a copy of the last response body.
type bodyCapture struct {
	mu   sync.Mutex
	last []byte
}

func (c *bodyCapture) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.last = body
	c.mu.Unlock()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, nil
}

// benchPageBody is a real 100-record page body served by the simulator:
// the second page of a desktop, so it carries a NextToken.
func benchPageBody(b *testing.B) []byte {
	b.Helper()
	_, srv := benchSim(b, 1000)
	capture := &bodyCapture{}
	c := benchClient(srv.URL, upstream.WithTransport(capture))
	first, err := c.DescribeImageModifiedRecords(context.Background(), upstream.DescribeInput{
		RegionID: "cn-hangzhou", DesktopID: benchDesktop, MaxResults: upstream.MaxPageSize})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.DescribeImageModifiedRecords(context.Background(), upstream.DescribeInput{
		RegionID: "cn-hangzhou", DesktopID: benchDesktop, MaxResults: upstream.MaxPageSize, NextToken: first.NextToken}); err != nil {
		b.Fatal(err)
	}
	return capture.last
}

func BenchmarkDecodePage(b *testing.B) { benchmarkDecode(b, upstream.DecodePage) }

// BenchmarkDecodePageEncodingJSON is the decoder DecodePage replaced, on
// the same page, for comparison.
func BenchmarkDecodePageEncodingJSON(b *testing.B) { benchmarkDecode(b, referenceDecodePage) }

func benchmarkDecode(b *testing.B, decode func([]byte) (*upstream.Page, error)) {
	body := benchPageBody(b)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	var records int
	for b.Loop() {
		p, err := decode(body)
		if err != nil {
			b.Fatal(err)
		}
		records += len(p.Records)
	}
	b.ReportMetric(float64(records)/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(records), "ns/record")
}

// BenchmarkDescribe is one whole DescribeImageModifiedRecords call of 100
// records against the simulator on loopback (HTTP/1.1 keep-alive), for
// each signature version. Simulator time is included.
func BenchmarkDescribe(b *testing.B) {
	for _, sig := range []upstream.SignatureVersion{upstream.SignatureV3, upstream.SignatureV1} {
		b.Run("signature="+string(sig), func(b *testing.B) {
			_, srv := benchSim(b, 1000)
			c := benchClient(srv.URL, upstream.WithSignatureVersion(sig))
			in := upstream.DescribeInput{RegionID: "cn-hangzhou", DesktopID: benchDesktop, MaxResults: upstream.MaxPageSize}
			ctx := context.Background()
			b.ReportAllocs()
			var records int
			for b.Loop() {
				p, err := c.DescribeImageModifiedRecords(ctx, in)
				if err != nil {
					b.Fatal(err)
				}
				records += len(p.Records)
			}
			b.ReportMetric(float64(records)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// BenchmarkPages is a whole desktop of 1,000 records (10 calls) through
// Pages and the client, against the simulator on loopback.
func BenchmarkPages(b *testing.B) {
	const n = 1000
	_, srv := benchSim(b, n)
	c := benchClient(srv.URL)
	in := upstream.DescribeInput{RegionID: "cn-hangzhou", DesktopID: benchDesktop}
	ctx := context.Background()
	b.ReportAllocs()
	var records int
	for b.Loop() {
		got := 0
		for p, err := range upstream.Pages(ctx, c, in) {
			if err != nil {
				b.Fatal(err)
			}
			got += len(p.Records)
		}
		if got != n {
			b.Fatal("got " + strconv.Itoa(got) + " records")
		}
		records += got
	}
	b.ReportMetric(float64(records)/b.Elapsed().Seconds(), "records/s")
}
