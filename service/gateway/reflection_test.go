package gateway_test

import (
	"slices"
	"testing"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
)

// TestReflectionListsEveryService: what grpcurl list and buf curl see
// through reflection, over gRPC and gRPC-Web: the records service and the health
// service, each with a file that describes it (grpcurl describe).
func TestReflectionListsEveryService(t *testing.T) {
	t.Parallel()
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops})
	want := []string{imagerecordsv1connect.ImageRecordsServiceName, grpchealth.HealthV1ServiceName} // sorted
	for _, opts := range [][]connect.ClientOption{{connect.WithGRPC()}, {connect.WithGRPCWeb()}} {
		rs := grpcreflect.NewClient(h.HTTP, h.URL, opts...).NewStream(t.Context())
		names, err := rs.ListServices()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, n := range names {
			got = append(got, string(n))
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("reflection lists %v, want %v", got, want)
		}
		for _, name := range want {
			files, err := rs.FileContainingSymbol(protoreflect.FullName(name))
			if err != nil || len(files) == 0 {
				t.Errorf("no file describes %s: %v", name, err)
			}
		}
		_, _ = rs.Close()
	}
}
