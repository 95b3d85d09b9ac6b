package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/encoding/protojson"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/service"
	"github.com/imagerecords/imagerecords/upstream"
)

// fakeAPI answers DescribeImageModifiedRecords with a function and keeps
// the inputs it saw.
type fakeAPI struct {
	answer func(in upstream.DescribeInput) (*upstream.Page, error)
	inputs []upstream.DescribeInput
}

func (f *fakeAPI) DescribeImageModifiedRecords(_ context.Context, in upstream.DescribeInput) (*upstream.Page, error) {
	f.inputs = append(f.inputs, in)
	return f.answer(in)
}

func records(n int) []upstream.Record {
	out := make([]upstream.Record, n)
	for i := range out {
		out[i] = upstream.Record{Status: i % 3, ImageID: "m-" + string(rune('a'+i%26)), UpdateTime: time.Unix(int64(i), 5e6).UTC()}
	}
	return out
}

func list(t *testing.T, svc *service.Service, req *imagerecordsv1.ListImageModifiedRecordsRequest) (*imagerecordsv1.ListImageModifiedRecordsResponse, error) {
	t.Helper()
	res, err := svc.ListImageModifiedRecords(t.Context(), connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

func TestListConvertsRecords(t *testing.T) {
	t.Parallel()
	when := time.Date(2022, 3, 3, 2, 43, 44, 851e6, time.UTC)
	api := &fakeAPI{answer: func(upstream.DescribeInput) (*upstream.Page, error) {
		return &upstream.Page{RequestID: "RID", TotalCount: 4, Records: []upstream.Record{
			{Status: 0, UpdateTime: when, ImageID: "m-1", ImageName: "Windows 镜像 a", NewImageID: "m-2", NewImageName: "b", Reason: ""},
			{Status: 1},
			{Status: 2, Reason: "disk full"},
			{Status: 7}, // unknown to this version: kept, never dropped
		}}, nil
	}}
	res, err := list(t, service.New(api), &imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: "cn-hangzhou", DesktopId: "ecd-abc"})
	if err != nil {
		t.Fatal(err)
	}
	if api.inputs[0].MaxResults != 10 {
		t.Errorf("page_size 0 asked the upstream for %d records, want 10", api.inputs[0].MaxResults)
	}
	want := []struct {
		status   imagerecordsv1.ImageModificationStatus
		upstream int32
	}{
		{imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_IN_PROGRESS, 0},
		{imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_SUCCEEDED, 1},
		{imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_FAILED, 2},
		{imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_UNSPECIFIED, 7},
	}
	if len(res.GetRecords()) != len(want) {
		t.Fatalf("got %d records", len(res.GetRecords()))
	}
	for i, w := range want {
		r := res.GetRecords()[i]
		if r.GetStatus() != w.status || r.GetUpstreamStatus() != w.upstream {
			t.Errorf("record %d: status %v/%d, want %v/%d", i, r.GetStatus(), r.GetUpstreamStatus(), w.status, w.upstream)
		}
		if r.UpstreamStatus == nil {
			t.Errorf("record %d: upstream_status is not set", i)
		}
	}
	// upstream_status 0 (in progress) is the proto3 default: only presence
	// keeps it in JSON, where the README promises the raw number.
	js, err := protojson.Marshal(res.GetRecords()[0])
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(js, &fields); err != nil {
		t.Fatal(err)
	}
	if v, ok := fields["upstreamStatus"]; !ok || v != 0.0 {
		t.Errorf("record 0 as JSON has upstreamStatus %v (present %t), want 0: %s", v, ok, js)
	}
	r := res.GetRecords()[0]
	if !r.GetUpdateTime().AsTime().Equal(when) || r.GetImageName() != "Windows 镜像 a" || r.GetNewImageId() != "m-2" {
		t.Errorf("record 0 = %v", r)
	}
	if res.GetRecords()[1].GetUpdateTime() != nil {
		t.Errorf("a missing UpdateTime became %v", res.GetRecords()[1].GetUpdateTime())
	}
	if res.GetRecords()[2].GetReason() != "disk full" || res.GetRequestId() != "RID" || res.GetTotalCount() != 4 || res.GetNextPageToken() != "" {
		t.Errorf("response = %v", res)
	}
}

func TestListPagesWithTokens(t *testing.T) {
	t.Parallel()
	// The upstream holds 25 records; its tokens are record offsets.
	all := records(25)
	api := &fakeAPI{answer: func(in upstream.DescribeInput) (*upstream.Page, error) {
		start := 0
		if in.NextToken != "" {
			start = int(in.NextToken[0] - 'A')
		}
		end := min(start+in.MaxResults, len(all))
		p := &upstream.Page{TotalCount: len(all), Records: all[start:end]}
		if end < len(all) {
			p.NextToken = string(rune('A' + end))
		}
		return p, nil
	}}
	svc := service.New(api)
	var got []string
	token := ""
	for range 10 {
		res, err := list(t, svc, &imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: "cn-hangzhou", DesktopId: "ecd-abc", PageSize: 7, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res.GetRecords() {
			got = append(got, r.GetUpdateTime().AsTime().String())
		}
		if token = res.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(got) != 25 {
		t.Fatalf("paged through %d records, want 25", len(got))
	}
	for i, g := range got {
		if want := all[i].UpdateTime.String(); g != want {
			t.Fatalf("record %d = %s, want %s", i, g, want)
		}
	}
}

func TestListRefusesATokenThatDoesNotAdvance(t *testing.T) {
	t.Parallel()
	api := &fakeAPI{answer: func(in upstream.DescribeInput) (*upstream.Page, error) {
		return &upstream.Page{Records: records(2), NextToken: "SAME"}, nil
	}}
	svc := service.New(api)
	first, err := list(t, svc, &imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: "cn-hangzhou", DesktopId: "ecd-abc"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = list(t, svc, &imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: "cn-hangzhou", DesktopId: "ecd-abc", PageToken: first.GetNextPageToken()})
	if connect.CodeOf(err) != connect.CodeInternal {
		t.Fatalf("err = %v, want Internal: a caller looping on next_page_token would never end", err)
	}
}

func TestUpstreamErrorsMapToCodes(t *testing.T) {
	t.Parallel()
	const secretish = "server string to sign is: POST&%2F&AccessKeyId%3DLTAI%26SecurityToken%3DSTS.secret"
	testCases := []struct {
		name      string
		err       error
		code      connect.Code
		reason    string
		retryInfo bool
		noMessage bool // the upstream message must not reach the caller
	}{
		{"throttled", &upstream.APIError{HTTPStatus: 400, Code: "Throttling.User", RequestID: "R1", Recommend: "https://r"}, connect.CodeUnavailable, "Throttling.User", true, false},
		{"unavailable", &upstream.APIError{HTTPStatus: 503, Code: "ServiceUnavailable"}, connect.CodeUnavailable, "ServiceUnavailable", true, false},
		{"internal upstream", &upstream.APIError{HTTPStatus: 500, Code: "InternalError"}, connect.CodeUnavailable, "InternalError", true, false},
		{"bad gateway without JSON", &upstream.APIError{HTTPStatus: 502, Message: "<html>"}, connect.CodeUnavailable, "HTTP_502", true, false},
		{"bad signature", &upstream.APIError{HTTPStatus: 400, Code: "SignatureDoesNotMatch", Message: secretish}, connect.CodeInternal, "SignatureDoesNotMatch", false, true},
		{"clock skew", &upstream.APIError{HTTPStatus: 400, Code: "InvalidTimeStamp.Expired", Message: secretish}, connect.CodeInternal, "InvalidTimeStamp.Expired", false, true},
		{"unknown key", &upstream.APIError{HTTPStatus: 404, Code: "InvalidAccessKeyId.NotFound", Message: secretish}, connect.CodeInternal, "InvalidAccessKeyId.NotFound", false, true},
		{"expired STS token", &upstream.APIError{HTTPStatus: 400, Code: "InvalidSecurityToken.Expired", Message: secretish}, connect.CodeInternal, "InvalidSecurityToken.Expired", false, true},
		{"RAM denial", &upstream.APIError{HTTPStatus: 403, Code: "Forbidden.RAM"}, connect.CodePermissionDenied, "Forbidden.RAM", false, false},
		{"bad parameter", &upstream.APIError{HTTPStatus: 400, Code: "InvalidParameter"}, connect.CodeInvalidArgument, "InvalidParameter", false, false},
		{"bad region", &upstream.APIError{HTTPStatus: 404, Code: "InvalidRegionId"}, connect.CodeInvalidArgument, "InvalidRegionId", false, false},
		{"missing desktop", &upstream.APIError{HTTPStatus: 404, Code: "InvalidDesktopId.NotFound"}, connect.CodeNotFound, "InvalidDesktopId.NotFound", false, false},
		{"unknown code", &upstream.APIError{HTTPStatus: 400, Code: "Weird.Thing", Message: secretish}, connect.CodeInternal, "Weird.Thing", false, true},
		{"malformed answer", upstream.ErrMalformedResponse, connect.CodeInternal, "UPSTREAM_RESPONSE_MALFORMED", false, false},
		{"no credentials", upstream.ErrNoCredentials, connect.CodeInternal, "GATEWAY_CREDENTIALS_MISSING", false, false},
		{"network", errors.New("dial tcp: connection refused"), connect.CodeUnavailable, "UPSTREAM_UNREACHABLE", true, false},
		{"deadline", context.DeadlineExceeded, connect.CodeDeadlineExceeded, "", false, false},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			svc := service.New(&fakeAPI{answer: func(upstream.DescribeInput) (*upstream.Page, error) { return nil, tc.err }})
			_, err := list(t, svc, &imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: "cn-hangzhou", DesktopId: "ecd-abc"})
			if connect.CodeOf(err) != tc.code {
				t.Fatalf("code = %v (%v), want %v", connect.CodeOf(err), err, tc.code)
			}
			if tc.noMessage && (strings.Contains(err.Error(), "STS.secret") || strings.Contains(err.Error(), "string to sign")) {
				t.Errorf("the caller sees the upstream message: %v", err)
			}
			cerr, _ := errors.AsType[*connect.Error](err)
			var info *errdetails.ErrorInfo
			var retry *errdetails.RetryInfo
			for _, d := range cerr.Details() {
				switch v, _ := d.Value(); v := v.(type) {
				case *errdetails.ErrorInfo:
					info = v
				case *errdetails.RetryInfo:
					retry = v
				}
			}
			if tc.reason != "" && info.GetReason() != tc.reason {
				t.Errorf("ErrorInfo = %v, want reason %s", info, tc.reason)
			}
			if (retry != nil) != tc.retryInfo {
				t.Errorf("RetryInfo = %v, want present: %v", retry, tc.retryInfo)
			}
			if apiErr, ok := tc.err.(*upstream.APIError); ok && apiErr.RequestID != "" && info.GetMetadata()["upstream_request_id"] != apiErr.RequestID {
				t.Errorf("ErrorInfo metadata %v lacks the upstream request id", info.GetMetadata())
			}
		})
	}
}
