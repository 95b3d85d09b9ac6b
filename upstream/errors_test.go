package upstream_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/upstreamtest"
)

func TestAPIErrorFromResponse(t *testing.T) {
	t.Parallel()
	longBody := strings.Repeat("x", 5000)
	testCases := []struct {
		name string
		step upstreamtest.Answer
		want upstream.APIError
		kind upstream.Kind
		// wantMessagePrefix checks Message by prefix instead of equality.
		wantMessagePrefix bool
	}{
		{
			name: "JSON error body",
			step: upstreamtest.Answer{Status: http.StatusForbidden, Body: `{"RequestId":"7F8E-1","HostId":"ecd.cn-hangzhou.aliyuncs.com","Code":"Forbidden.RAM","Message":"User not authorized to operate on the specified resource.","Recommend":"https://api.aliyun.com/troubleshoot?q=Forbidden.RAM&product=ecd"}`},
			want: upstream.APIError{
				HTTPStatus: http.StatusForbidden, Code: "Forbidden.RAM",
				Message:   "User not authorized to operate on the specified resource.",
				RequestID: "7F8E-1", HostID: "ecd.cn-hangzhou.aliyuncs.com",
				Recommend: "https://api.aliyun.com/troubleshoot?q=Forbidden.RAM&product=ecd",
			},
			kind: upstream.KindPermissionDenied,
		},
		{
			name: "non-JSON 502",
			step: upstreamtest.Answer{Status: http.StatusBadGateway, Body: "Bad Gateway\n", Header: http.Header{"Content-Type": {"text/plain"}}},
			want: upstream.APIError{HTTPStatus: http.StatusBadGateway, Message: "Bad Gateway"},
			kind: upstream.KindUnavailable,
		},
		{
			name: "non-JSON 503 html",
			step: upstreamtest.Answer{Status: http.StatusServiceUnavailable, Body: "<html>down for maintenance</html>", Header: http.Header{"Content-Type": {"text/html"}}},
			want: upstream.APIError{HTTPStatus: http.StatusServiceUnavailable, Message: "<html>down for maintenance</html>"},
			kind: upstream.KindUnavailable,
		},
		{
			name: "non-JSON 404",
			step: upstreamtest.Answer{Status: http.StatusNotFound, Body: "404 page not found", Header: http.Header{"Content-Type": {"text/plain"}}},
			want: upstream.APIError{HTTPStatus: http.StatusNotFound, Message: "404 page not found"},
			kind: upstream.KindUnknown,
		},
		{
			name:              "long non-JSON body is truncated",
			step:              upstreamtest.Answer{Status: http.StatusInternalServerError, Body: longBody, Header: http.Header{"Content-Type": {"text/plain"}}},
			want:              upstream.APIError{HTTPStatus: http.StatusInternalServerError, Message: strings.Repeat("x", 200)},
			kind:              upstream.KindUnavailable,
			wantMessagePrefix: true,
		},
		{
			name: "throttling with x-ratelimit-user-api",
			step: upstreamtest.Answer{Status: http.StatusBadRequest, Body: upstreamtest.ErrorBody("Throttling.User"), Header: http.Header{"X-Ratelimit-User-Api": {"10;w=1"}}},
			want: upstream.APIError{
				HTTPStatus: http.StatusBadRequest, Code: "Throttling.User", Message: "scripted Throttling.User",
				RequestID: "REQ-Throttling.User", HostID: "ecd.cn-hangzhou.aliyuncs.com",
				Recommend: "https://api.aliyun.com/troubleshoot?q=Throttling.User", RetryAfter: "10;w=1",
			},
			kind: upstream.KindThrottled,
		},
		{
			name: "throttling with x-ratelimit-user",
			step: upstreamtest.Answer{Status: http.StatusBadRequest, Body: upstreamtest.ErrorBody("Throttling.User"), Header: http.Header{"X-Ratelimit-User": {"100;w=60"}}},
			want: upstream.APIError{
				HTTPStatus: http.StatusBadRequest, Code: "Throttling.User", Message: "scripted Throttling.User",
				RequestID: "REQ-Throttling.User", HostID: "ecd.cn-hangzhou.aliyuncs.com",
				Recommend: "https://api.aliyun.com/troubleshoot?q=Throttling.User", RetryAfter: "100;w=60",
			},
			kind: upstream.KindThrottled,
		},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sc := upstreamtest.InOrder(t, tc.step)
			// One answer, no retry of any kind: the test reads one error.
			c := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(sc.URL), upstream.WithRetryPolicy(fastRetry(1)), upstream.WithMaxWait(0))
			_, err := describe(t, c)
			apiErr, ok := errors.AsType[*upstream.APIError](err)
			if !ok {
				t.Fatalf("error %v (%T) is not an *upstream.APIError", err, err)
			}
			got := *apiErr
			if tc.wantMessagePrefix {
				if !strings.HasPrefix(got.Message, tc.want.Message) || len(got.Message) > len(tc.want.Message)+8 {
					t.Errorf("Message (%d bytes) = %.40q…, want the first %d bytes and at most an ellipsis", len(got.Message), got.Message, len(tc.want.Message))
				}
				got.Message = tc.want.Message
			}
			if got != tc.want {
				t.Errorf("APIError:\n got  %+v\n want %+v", got, tc.want)
			}
			if k := apiErr.Kind(); k != tc.kind {
				t.Errorf("Kind() = %v, want %v", k, tc.kind)
			}
		})
	}
}

func TestAPIErrorMessage(t *testing.T) {
	t.Parallel()
	e := &upstream.APIError{HTTPStatus: 400, Code: "InvalidParameter", Message: "MaxResults is bad", RequestID: "REQ-1"}
	msg := e.Error()
	for _, want := range []string{"InvalidParameter", "400", "MaxResults is bad", "REQ-1"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Error() = %q, missing %q", msg, want)
		}
	}
}

func TestAPIErrorKind(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name   string
		code   string
		status int
		want   upstream.Kind
	}{
		{"Throttling", "Throttling", 400, upstream.KindThrottled},
		{"Throttling.User", "Throttling.User", 400, upstream.KindThrottled},
		{"Throttling.Api", "Throttling.Api", 400, upstream.KindThrottled},
		{"ServiceUnavailable", "ServiceUnavailable", 503, upstream.KindUnavailable},
		{"InternalError", "InternalError", 500, upstream.KindUnavailable},
		{"InvalidAccessKeyId.NotFound", "InvalidAccessKeyId.NotFound", 404, upstream.KindGatewayCredentials},
		{"InvalidAccessKeyId.Inactive", "InvalidAccessKeyId.Inactive", 400, upstream.KindGatewayCredentials},
		{"InvalidSecurityToken.Expired", "InvalidSecurityToken.Expired", 400, upstream.KindGatewayCredentials},
		{"InvalidSecurityToken.Malformed", "InvalidSecurityToken.Malformed", 400, upstream.KindGatewayCredentials},
		{"SignatureDoesNotMatch", "SignatureDoesNotMatch", 400, upstream.KindGatewaySignature},
		{"IncompleteSignature", "IncompleteSignature", 400, upstream.KindGatewaySignature},
		{"InvalidTimeStamp.Expired", "InvalidTimeStamp.Expired", 400, upstream.KindGatewaySignature},
		{"SignatureNonceUsed", "SignatureNonceUsed", 400, upstream.KindGatewaySignature},
		{"Forbidden.RAM", "Forbidden.RAM", 403, upstream.KindPermissionDenied},
		{"Forbidden.NoPermission", "Forbidden.NoPermission", 403, upstream.KindPermissionDenied},
		{"MissingParameter", "MissingParameter", 400, upstream.KindInvalidArgument},
		{"MissingDesktopId", "MissingDesktopId", 400, upstream.KindInvalidArgument},
		{"InvalidParameter", "InvalidParameter", 400, upstream.KindInvalidArgument},
		{"InvalidRegionId", "InvalidRegionId", 400, upstream.KindInvalidArgument},
		{"InvalidDesktopId.NotFound", "InvalidDesktopId.NotFound", 400, upstream.KindNotFound},
		{"InvalidRegion.NotFound", "InvalidRegion.NotFound", 404, upstream.KindInvalidArgument},
		{"unknown 400 code", "SomethingNew.Unheard", 400, upstream.KindUnknown},
		{"unknown 503 code falls back to the status", "SomethingNew.Unheard", 503, upstream.KindUnavailable},
		{"no code, 500", "", 500, upstream.KindUnavailable},
		{"no code, 400", "", 400, upstream.KindUnknown},
		{"no code, 429 Too Many Requests", "", 429, upstream.KindThrottled},
		{"code wins over a 5xx status", "InvalidParameter", 500, upstream.KindInvalidArgument},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := &upstream.APIError{HTTPStatus: tc.status, Code: tc.code}
			if got := e.Kind(); got != tc.want {
				t.Errorf("Kind() of %q (HTTP %d) = %v, want %v", tc.code, tc.status, got, tc.want)
			}
		})
	}
}

func TestPaginationErrorMessage(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name string
		err  *upstream.PaginationError
		want string
	}{
		{"did not advance", &upstream.PaginationError{Page: 2, FirstSeen: 1}, "did not advance"},
		{"cycle", &upstream.PaginationError{Page: 3, FirstSeen: 1}, "cycle"},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if msg := tc.err.Error(); !strings.Contains(msg, tc.want) {
				t.Errorf("Error() = %q, want it to say %q", msg, tc.want)
			}
		})
	}
}

// TestAPIErrorNeverEchoesCredentialMessages: the upstream's message of a
// signature or credentials error may quote the string to sign, with the
// AccessKeyId, the signature and an STS token in it. Error, which logs and
// wrapped errors show, leaves such messages out whole, while it keeps the
// message of an error about the request.
func TestAPIErrorNeverEchoesCredentialMessages(t *testing.T) {
	t.Parallel()
	const (
		keyID     = "LTAI5tLeakedKeyId0001"
		signature = "0f5c1e2d3b4a69788796a5b4c3d2e1f0"
		stsToken  = "CAIS-sts-token-leak"
	)
	quoted := "The request signature does not conform to Aliyun standards. server string to sign is:GET&%2F&AccessKeyId%3D" +
		keyID + "%26SecurityToken%3D" + stsToken + " Signature=" + signature
	for _, code := range []string{
		"SignatureDoesNotMatch", "IncompleteSignature", "SignatureNonceUsed", "InvalidTimeStamp.Expired", "MissingSignature",
		"InvalidAccessKeyId.NotFound", "InvalidAccessKeyId.Inactive", "InvalidSecurityToken.Expired", "InvalidSecurityToken.MismatchWithAccessKey",
	} {
		e := &upstream.APIError{HTTPStatus: http.StatusBadRequest, Code: code, Message: quoted, RequestID: "REQ-SIG"}
		got := e.Error()
		for _, secret := range []string{keyID, signature, stsToken, "string to sign"} {
			if strings.Contains(got, secret) {
				t.Errorf("%s: Error() = %q echoes %q", code, got, secret)
			}
		}
		if !strings.Contains(got, code) || !strings.Contains(got, "REQ-SIG") {
			t.Errorf("%s: Error() = %q, want the code and the RequestId, which an operator needs", code, got)
		}
	}
	// A message about the request is the caller's to read: it stays.
	e := &upstream.APIError{HTTPStatus: http.StatusBadRequest, Code: "InvalidParameter.MaxResults", Message: "MaxResults must be 1..100"}
	if !strings.Contains(e.Error(), "MaxResults must be 1..100") {
		t.Errorf("Error() = %q, want the message of an error about the request", e.Error())
	}
}
