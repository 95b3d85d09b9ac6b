package ecdsim_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	openapiutil "github.com/alibabacloud-go/openapi-util/service"
	"github.com/alibabacloud-go/tea/tea"

	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// officialRequest is a request built and signed the way the official Go
// SDK builds and signs it (tea.DoRequest with openapi-util's signers):
// query string from url.Values.Encode, header names as given, lower-case.
type officialRequest struct {
	v1      bool
	form    bool   // V1 only: parameters in a form body
	method  string // default POST
	key     ecdsim.Key
	secret  string            // signs instead of key.AccessKeySecret
	headers map[string]string // V3 only: extra headers to sign
}

func (o officialRequest) send(t *testing.T, srv *httptest.Server, params url.Values) (*http.Response, []byte) {
	t.Helper()
	method := o.method
	if method == "" {
		method = http.MethodPost
	}
	secret := o.secret
	if secret == "" {
		secret = o.key.AccessKeySecret
	}
	host := strings.TrimPrefix(srv.URL, "http://")
	date := fixedNow.Format("2006-01-02T15:04:05Z")
	nonce := newNonce()
	query := map[string]*string{}
	for k, vs := range params {
		query[k] = tea.String(vs[0])
	}
	headers := map[string]*string{}
	var body string
	if o.v1 {
		for k, v := range map[string]string{
			"Action": testAction, "Version": testVer, "Format": "JSON", "AccessKeyId": o.key.AccessKeyID,
			"SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0", "SignatureNonce": nonce, "Timestamp": date,
		} {
			query[k] = tea.String(v)
		}
		if o.key.SecurityToken != "" {
			query["SecurityToken"] = tea.String(o.key.SecurityToken)
		}
		query["Signature"] = openapiutil.GetRPCSignature(query, tea.String(method), tea.String(secret))
		if o.form {
			form := url.Values{}
			for k, v := range query {
				form.Set(k, *v)
			}
			body = form.Encode()
			query = map[string]*string{}
			headers["content-type"] = tea.String("application/x-www-form-urlencoded")
		}
	} else {
		for k, v := range map[string]string{
			"host": host, "x-acs-action": testAction, "x-acs-version": testVer, "x-acs-date": date,
			"x-acs-signature-nonce": nonce, "x-acs-content-sha256": acsEmptyPayloadHash,
		} {
			headers[k] = tea.String(v)
		}
		if o.key.SecurityToken != "" {
			headers["x-acs-accesskey-id"] = tea.String(o.key.AccessKeyID)
			headers["x-acs-security-token"] = tea.String(o.key.SecurityToken)
		}
		for k, v := range o.headers {
			headers[k] = tea.String(v)
		}
		req := &tea.Request{Method: tea.String(method), Pathname: tea.String("/"), Query: query, Headers: headers}
		headers["Authorization"] = openapiutil.GetAuthorization(req, tea.String("ACS3-HMAC-SHA256"),
			tea.String(acsEmptyPayloadHash), tea.String(o.key.AccessKeyID), tea.String(secret))
	}
	q := url.Values{}
	for k, v := range query {
		q.Set(k, *v)
	}
	target := srv.URL + "/"
	if len(q) > 0 {
		target += "?" + q.Encode()
	}
	r, err := http.NewRequestWithContext(t.Context(), method, target, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		if k != "host" {
			r.Header[k] = []string{*v} // as tea sets them: not canonicalised
		}
	}
	resp, err := srv.Client().Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// acsEmptyPayloadHash is the SHA-256 of no body, spelled out so that these
// requests owe nothing to package acs.
const acsEmptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// TestAcceptsRequestsSignedByTheOfficialSDK sends the simulator requests
// signed by Alibaba's official signing code, over loopback HTTP: the
// simulator verifies with package acs, and must accept what the real API
// accepts.
func TestAcceptsRequestsSignedByTheOfficialSDK(t *testing.T) {
	t.Parallel()
	sim := newSim(t, ecdsim.Config{Seed: 1})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	id := desktopWith(t, sim, 42)
	testCases := []struct {
		name string
		req  officialRequest
		code string // empty: a page of 5
	}{
		{"V3 long-term key", officialRequest{key: longKey}, ""},
		{"V3 STS key", officialRequest{key: stsKey}, ""},
		{"V3 GET", officialRequest{key: longKey, method: http.MethodGet}, ""},
		// The official code trims Unicode white space off a signed value;
		// HTTP sends the value as it is.
		{"V3 header padded with Unicode spaces", officialRequest{key: longKey, headers: map[string]string{"x-acs-note": "\u00a0note\u3000"}}, ""},
		{"V1 POST query", officialRequest{v1: true, key: longKey}, ""},
		{"V1 GET", officialRequest{v1: true, key: longKey, method: http.MethodGet}, ""},
		{"V1 STS form body", officialRequest{v1: true, key: stsKey, form: true}, ""},
		{"V3 wrong secret", officialRequest{key: longKey, secret: "wrong"}, "SignatureDoesNotMatch"},
		{"V1 wrong secret", officialRequest{v1: true, key: longKey, secret: "wrong"}, "SignatureDoesNotMatch"},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// The NextToken-like value needs encoding: + / = and a space.
			resp, body := tc.req.send(t, srv, params(id, "MaxResults", "5", "ClientToken", "a+b/c= d*"))
			if tc.code != "" {
				var e apiError
				decodeStrict(t, body, &e)
				if e.Code != tc.code {
					t.Fatalf("status %d code %s (%s), want %s", resp.StatusCode, e.Code, e.Message, tc.code)
				}
				return
			}
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d, want 200; body %s", resp.StatusCode, body)
			}
			var p page
			if err := json.Unmarshal(body, &p); err != nil {
				t.Fatalf("decoding %s: %v", body, err)
			}
			if len(p.ImageModifiedRecords) != 5 {
				t.Fatalf("%d records, want 5", len(p.ImageModifiedRecords))
			}
		})
	}
}
