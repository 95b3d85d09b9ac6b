package service_test

import (
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/protobuf/proto"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service"
	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// Benchmarks of the service hot path: converting a page, one List page
// through the service, and a stream of 10 pages through a real h2c server
// and a connect gRPC client. The upstream is a fake that answers prebuilt
// pages of realistic records (the simulator's), so only the service, the
// connect handler and the transport are measured.
//
//	go test -run '^$' -bench . -benchmem ./service

const benchDesktopID = "ecd-bd53sfmysz8ir0001"

// benchRecords returns the simulator's first n records of a desktop, as
// the upstream client decodes them.
func benchRecords(b *testing.B, n int) []upstream.Record {
	b.Helper()
	sim, err := ecdsim.New(ecdsim.Config{
		Seed:     1,
		Desktops: []ecdsim.Desktop{{ID: benchDesktopID, Records: n}},
		Keys:     []ecdsim.Key{{AccessKeyID: "LTAIbench", AccessKeySecret: "bench"}},
	})
	if err != nil {
		b.Fatal(err)
	}
	out := make([]upstream.Record, n)
	for i := range out {
		r, _ := sim.Record(benchDesktopID, i)
		t, err := time.Parse(time.RFC3339Nano, r.UpdateTime)
		if err != nil {
			b.Fatal(err)
		}
		out[i] = upstream.Record{Status: r.Status, UpdateTime: t, ImageID: r.ImageID, ImageName: r.ImageName,
			NewImageID: r.NewImageID, NewImageName: r.NewImageName, Reason: r.Reason}
	}
	return out
}

// benchAPI answers with prebuilt pages chained by NextToken "t1", "t2", ...
type benchAPI struct{ pages []*upstream.Page }

func newBenchAPI(b *testing.B, pages, perPage int) *benchAPI {
	records := benchRecords(b, pages*perPage)
	api := &benchAPI{}
	for i := range pages {
		p := &upstream.Page{
			RequestID:  "4D9137BD-02B3-79DB-6953-29221827" + strconv.Itoa(1000+i),
			TotalCount: pages * perPage,
			Records:    records[i*perPage : (i+1)*perPage],
		}
		if i+1 < pages {
			p.NextToken = "t" + strconv.Itoa(i+1)
		}
		api.pages = append(api.pages, p)
	}
	return api
}

func (a *benchAPI) DescribeImageModifiedRecords(_ context.Context, in upstream.DescribeInput) (*upstream.Page, error) {
	i := 0
	if in.NextToken != "" {
		i, _ = strconv.Atoi(in.NextToken[1:])
	}
	p := *a.pages[i] // a copy: Pages sets Resume on it and cuts Records
	return &p, nil
}

func benchService(api upstream.API) *service.Service {
	return service.New(api, service.WithMeterProvider(metricnoop.NewMeterProvider()))
}

// BenchmarkRecordConversion is a List page through the service with
// records=0 and records=100 from the fake upstream: the difference is the
// conversion of 100 records to proto (the converter itself is unexported).
func BenchmarkRecordConversion(b *testing.B) {
	for _, n := range []int{0, 100} {
		b.Run("records="+strconv.Itoa(n), func(b *testing.B) {
			api := &benchAPI{pages: []*upstream.Page{{RequestID: "R", TotalCount: n, Records: benchRecords(b, n)}}}
			svc := benchService(api)
			ctx := context.Background()
			req := &imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: "cn-hangzhou", DesktopId: benchDesktopID, PageSize: 100}
			b.ReportAllocs()
			for b.Loop() {
				res, err := svc.ListImageModifiedRecords(ctx, connect.NewRequest(req))
				if err != nil || len(res.Msg.GetRecords()) != n {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkListPage is one page of 100 records through the service's List
// handler, called directly, and then encoded as the wire would carry it.
func BenchmarkListPage(b *testing.B) {
	api := newBenchAPI(b, 2, 100)
	svc := benchService(api)
	ctx := context.Background()
	req := &imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: "cn-hangzhou", DesktopId: benchDesktopID, PageSize: 100}
	for _, marshal := range []bool{false, true} {
		name := "handler"
		if marshal {
			name = "handler+proto.Marshal"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			var records int
			for b.Loop() {
				res, err := svc.ListImageModifiedRecords(ctx, connect.NewRequest(req))
				if err != nil {
					b.Fatal(err)
				}
				if marshal {
					if _, err := proto.Marshal(res.Msg); err != nil {
						b.Fatal(err)
					}
				}
				records += len(res.Msg.GetRecords())
			}
			b.ReportMetric(float64(records)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// benchH2CServer serves svc as imagerecordsd does (compression from 1 KiB)
// on a loopback HTTP/1.1 + h2c server, with extra handler options.
func benchH2CServer(b *testing.B, svc *service.Service, opts ...connect.HandlerOption) string {
	b.Helper()
	mux := http.NewServeMux()
	mux.Handle(imagerecordsv1connect.NewImageRecordsServiceHandler(svc, append([]connect.HandlerOption{connect.WithCompressMinBytes(1024)}, opts...)...))
	srv := httptest.NewUnstartedServer(mux)
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &p
	srv.Start()
	b.Cleanup(srv.Close)
	return srv.URL
}

// gzipBestSpeed registers gzip at level 1 (BestSpeed) on a handler,
// instead of connect-go's default level.
func gzipBestSpeed() connect.HandlerOption {
	return connect.WithCompression("gzip",
		func() connect.Decompressor { return &gzip.Reader{} },
		func() connect.Compressor {
			w, _ := gzip.NewWriterLevel(io.Discard, gzip.BestSpeed)
			return w
		})
}

// BenchmarkStream10Pages is a whole stream of 10 pages of 100 records from
// the fake upstream, through a real h2c server and a connect gRPC client:
// with the client accepting gzip (connect-go's default, so the handler
// compresses at gzip's default level), with the handler's gzip at
// BestSpeed, and without compression.
func BenchmarkStream10Pages(b *testing.B) {
	const pages, perPage = 10, 100
	cases := []struct {
		name       string
		clientGzip bool
		handler    []connect.HandlerOption
	}{
		{"gzip-default", true, nil},
		{"gzip-bestspeed", true, []connect.HandlerOption{gzipBestSpeed()}},
		{"identity", false, nil},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			url := benchH2CServer(b, benchService(newBenchAPI(b, pages, perPage)), c.handler...)
			var p http.Protocols
			p.SetUnencryptedHTTP2(true)
			opts := []connect.ClientOption{connect.WithGRPC()}
			if !c.clientGzip {
				opts = append(opts, connect.WithAcceptCompression("gzip", nil, nil))
			}
			client := imagerecordsv1connect.NewImageRecordsServiceClient(&http.Client{Transport: &http.Transport{Protocols: &p}}, url, opts...)
			req := &imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: "cn-hangzhou", DesktopId: benchDesktopID}
			ctx := context.Background()
			b.ReportAllocs()
			var records int
			for b.Loop() {
				stream, err := client.StreamImageModifiedRecords(ctx, connect.NewRequest(req))
				if err != nil {
					b.Fatal(err)
				}
				got := 0
				for stream.Receive() {
					got += len(stream.Msg().GetRecords())
				}
				if err := stream.Err(); err != nil || got != pages*perPage {
					b.Fatalf("%d records: %v", got, err)
				}
				stream.Close()
				records += got
			}
			b.ReportMetric(float64(records)/b.Elapsed().Seconds(), "records/s")
		})
	}
}
