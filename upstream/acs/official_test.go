package acs_test

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	openapiutil "github.com/alibabacloud-go/openapi-util/service"
	"github.com/alibabacloud-go/tea/tea"

	"github.com/imagerecords/imagerecords/upstream/acs"
)

// The tests in this file compare this package with Alibaba's official
// implementation, github.com/alibabacloud-go/openapi-util/service, the
// darabonba "openapiutil" that the official Go SDKs sign with:
//
//   - GetAuthorization(request, "ACS3-HMAC-SHA256", hashedPayload, id,
//     secret) returns the V3 Authorization header. It exposes neither the
//     canonical request nor the string to sign, so the tests compare the
//     whole header: equal signatures mean equal canonical requests (the
//     signature is an HMAC of their SHA-256).
//   - GetRPCSignature(params, method, secret) returns the V1 signature.
//   - GetEncodeParam(s) is the official percent-encoder; PercentEncode must
//     agree with it on every string.
//
// Where the official code and the published specification (ECD_API.md)
// part ways, this package does as follows; the tests account for each:
//
//  1. Signed header values. The specification says "trimmed"; the official
//     code trims with strings.TrimSpace, which also removes Unicode white
//     space such as U+00A0 and U+3000. We trim the same way: a request
//     that the official SDK signed is what the real API accepts, so that is
//     what the simulator must accept too. (HTTP itself only strips spaces
//     and tabs around a value; the client never sends either kind.)
//  2. Several values of one header (two spellings of one name in the
//     official SDK's map, or a repeated header on the wire): the official
//     code sorts them and joins them with a comma. We do the same.
//  3. V3 parameter names. The official code percent-encodes values but not
//     names (only its final replacement of + * and %7E touches them), so
//     "a b" is signed with a raw space while the URL carries a%20b. The
//     specification encodes names, and so do we: every real parameter name
//     is letters, digits and dots, where the two agree. The tests hand the
//     official function names already encoded with GetEncodeParam; it then
//     sorts by the encoded names where we sort by the raw ones (as the
//     specification and V1 do), which differs only for names that differ
//     at a byte such as / against an unreserved one such as . (a/ and a.);
//     for such sets the tests leave the parameters with reserved names out
//     of the comparison.
//  4. Not comparable: a name with several query values (the official code
//     takes a map of single values; we keep them in the order given, one
//     pair each), and an empty Host (we leave host out of the signature,
//     the official code signs "host:"); neither ever occurs in a request
//     the client sends.

const officialKeyID = "LTAI5tOfficialDiff"

// officialMethods are the methods the V3 differential signs with; V1 is
// compared for GET and POST, the two its specification knows.
var officialMethods = []string{"POST", "GET", "PUT", "DELETE", "PATCH", "HEAD"}

// tokenName keeps the bytes of s that an HTTP header name may hold (RFC
// 9110 tchar): no other name can be sent or received.
func tokenName(s string) string {
	return strings.Map(func(r rune) rune {
		if 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", r) {
			return r
		}
		return -1
	}, s)
}

// reservedName reports whether PercentEncode changes name.
func reservedName(name string) bool { return acs.PercentEncode(name) != name }

// sortsAlike reports whether sorting names raw and sorting them encoded
// give the same order (see 3 above).
func sortsAlike(names []string) bool {
	sorted := slices.Sorted(slices.Values(names))
	encoded := make([]string, len(sorted))
	for i, n := range sorted {
		encoded[i] = acs.PercentEncode(n)
	}
	return slices.IsSorted(encoded)
}

// officialQuery turns single-valued params into the official function's
// query map, each name encoded with the official encoder (see 3 above).
func officialQuery(t *testing.T, params url.Values) map[string]*string {
	t.Helper()
	q := make(map[string]*string, len(params))
	for name, vs := range params {
		q[tea.StringValue(openapiutil.GetEncodeParam(tea.String(name)))] = tea.String(vs[0])
	}
	return q
}

// checkEncoding compares PercentEncode with the official encoder.
func checkEncoding(t *testing.T, ss ...string) {
	t.Helper()
	for _, s := range ss {
		if got, want := acs.PercentEncode(s), tea.StringValue(openapiutil.GetEncodeParam(tea.String(s))); got != want {
			t.Fatalf("PercentEncode(%q) = %q, the official GetEncodeParam gives %q", s, got, want)
		}
	}
}

// officialV3 signs with the official GetAuthorization.
func officialV3(t *testing.T, method, host string, params url.Values, header map[string]string, hashedPayload, secret string) string {
	t.Helper()
	headers := make(map[string]*string, len(header)+1)
	for name, v := range header {
		headers[name] = tea.String(v)
	}
	if host != "" {
		headers["host"] = tea.String(host)
	}
	req := &tea.Request{
		Method:   tea.String(method),
		Pathname: tea.String("/"),
		Query:    officialQuery(t, params),
		Headers:  headers,
	}
	return tea.StringValue(openapiutil.GetAuthorization(req, tea.String(acs.V3Algorithm),
		tea.String(hashedPayload), tea.String(officialKeyID), tea.String(secret)))
}

// compareV3 signs one request with this package and the official code and
// fails on any difference. header maps names, in any case, to one value.
func compareV3(t *testing.T, method, host string, params url.Values, header map[string]string, payload []byte, secret string) {
	t.Helper()
	names := make([]string, 0, len(params))
	for name := range params {
		names = append(names, name)
	}
	if !sortsAlike(names) {
		for _, name := range names {
			if reservedName(name) {
				delete(params, name)
			}
		}
	}
	sum := sha256.Sum256(payload)
	hashed := hex.EncodeToString(sum[:])
	h := make(http.Header, len(header))
	for name, v := range header {
		h[name] = []string{v}
	}
	req := acs.V3Request{Method: method, Host: host, Query: params, Header: h, HashedPayload: hashed}
	sig, signed := req.Signature(secret)
	got := acs.V3Authorization(officialKeyID, signed, sig)
	if want := officialV3(t, method, host, params, header, hashed, secret); got != want {
		canonical, _ := req.CanonicalRequest()
		t.Fatalf("Authorization\n%s\nthe official GetAuthorization gives\n%s\nour canonical request:\n%q", got, want, canonical)
	}
}

// FuzzV3MatchesOfficial signs arbitrary methods, parameters, headers,
// bodies and secrets with V3Request and with the official GetAuthorization
// and requires the same Authorization header. The fixed headers are those
// the client signs, so that fuzzed ones sort among real ones.
func FuzzV3MatchesOfficial(f *testing.F) {
	// The client's own request (published vector B's parameters).
	f.Add(uint8(0), "DesktopId", "ecd-bd53sfmysz8ir****", "NextToken", "AAAAAV3MpHK1AP0pfERHZN5pu6l3d+SWeOobbIlDLjwhjkTk", "MaxResults", "10",
		"x-acs-security-token", "CAIS+sts/token==", "x-acs-accesskey-id", "STS.id", "ecd.cn-hangzhou.aliyuncs.com", "YourAccessKeySecret", []byte(""))
	// Reserved and unreserved characters in values, an empty value.
	f.Add(uint8(1), "Value", "a*b+c d/e=f~g%h&i", "Empty", "", "Tilde", "~-_.%7E", "X-Acs-Upper", "Mixed Case", "x-acs-lower", "v", "h", "secret", []byte("{}"))
	// Non-ASCII values, secrets and bodies; invalid UTF-8.
	f.Add(uint8(2), "ImageName", "镜像 ☃", "Bytes", "\xff\xfe\x80", "Nul", "a\x00b", "x-acs-name", "镜像", "content-type", "application/json; charset=utf-8", "ecd.vpc-proxy.aliyuncs.com", "秘密\xff", []byte("\x00\xff镜像"))
	// Header values to trim: ASCII and Unicode white space at either end,
	// and inside (kept).
	f.Add(uint8(3), "k", "v", "k2", "v2", "k3", "v3", "x-acs-pad", " \t padded \t ", "x-acs-nbsp", "\u00a0nbsp\u00a0inside\u3000", "host:8080", "s", []byte("body"))
	// Two spellings of one header name: one header with both values.
	f.Add(uint8(4), "RegionId", "cn-hangzhou", "", "empty name", "Tag.1.Key", "real nested name", "x-acs-date", "2023-10-26T10:22:33Z", "X-ACS-DATE", "2023-10-26T10:22:32Z", "h", "", []byte(nil))
	// Headers that must not be signed, and a name that is not a token.
	f.Add(uint8(5), "a", "1", "b", "2", "c", "3", "Accept", "application/json", "x acs bad(name)", "ignored?", "h", "k", []byte("x"))
	// Reserved names whose raw and encoded order agree, and disagree.
	f.Add(uint8(0), "a b", "1", "a*", "2", "a+", "3", "x-acs-a", "1", "x-acs-b", "2", "h", "k", []byte(""))
	f.Add(uint8(0), "a/", "1", "a.", "2", "a-", "3", "x-acs-a", "1", "x-acs-b", "2", "h", "k", []byte(""))

	f.Fuzz(func(t *testing.T, m uint8, k1, v1, k2, v2, k3, v3, h1, hv1, h2, hv2, host, secret string, payload []byte) {
		checkEncoding(t, k1, v1, k2, v2, k3, v3, secret)
		method := officialMethods[int(m)%len(officialMethods)]
		params := url.Values{}
		params.Set(k1, v1)
		params.Set(k2, v2)
		params.Set(k3, v3)
		header := map[string]string{
			"x-acs-action":          "DescribeImageModifiedRecords",
			"x-acs-version":         "2020-09-30",
			"x-acs-date":            "2023-10-26T10:22:32Z",
			"x-acs-signature-nonce": "3156853299f313e23d1673dc12e1703d",
		}
		for _, h := range [][2]string{{h1, hv1}, {h2, hv2}} {
			name := tokenName(h[0])
			if name == "" || strings.EqualFold(name, "host") {
				continue // Host is a field of its own, not a header.
			}
			header[name] = headerValue(h[1])
		}
		host = headerValue(host)
		if strings.TrimSpace(host) == "" {
			host = "ecd.cn-hangzhou.aliyuncs.com" // see 4 above
		}
		compareV3(t, method, host, params, header, payload, secret)
	})
}

// FuzzV1MatchesOfficial signs arbitrary parameters and secrets, for GET
// and POST, with V1Signature and with the official GetRPCSignature and
// requires the same signature. The fuzzed parameters join the common ones
// the client sends.
func FuzzV1MatchesOfficial(f *testing.F) {
	f.Add(false, "DesktopId", "ecd-bd53sfmysz8ir****", "NextToken", "AAAAAV3MpHK1AP0pfERHZN5pu6l3d+SWeOobbIlDLjwhjkTk", "SecurityToken", "CAIS+sts/token==", "testsecret")
	f.Add(true, "a b", "c+d=e*f~g", "Empty", "", "%", "%25%7E", "")
	f.Add(false, "镜像", "☃ \xff", "&=", "=&", "~", "*", "s\x00e\xffcret&")
	f.Add(true, "", "empty name", "Signature", "not signed twice", "Timestamp", "2016-02-23T12:46:24Z", "秘密")

	f.Fuzz(func(t *testing.T, get bool, k1, v1, k2, v2, k3, v3, secret string) {
		checkEncoding(t, k1, v1, k2, v2, k3, v3, secret)
		method := http.MethodPost
		if get {
			method = http.MethodGet
		}
		params := url.Values{
			"Action":           {"DescribeImageModifiedRecords"},
			"Version":          {"2020-09-30"},
			"Format":           {"JSON"},
			"AccessKeyId":      {officialKeyID},
			"SignatureMethod":  {"HMAC-SHA1"},
			"SignatureVersion": {"1.0"},
			"SignatureNonce":   {"3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"},
			"Timestamp":        {"2016-02-23T12:46:24Z"},
		}
		params.Set(k1, v1)
		params.Set(k2, v2)
		params.Set(k3, v3)
		official := make(map[string]*string, len(params))
		for name, vs := range params {
			official[name] = tea.String(vs[0])
		}
		got := acs.V1Signature(secret, method, params)
		if want := tea.StringValue(openapiutil.GetRPCSignature(official, tea.String(method), tea.String(secret))); got != want {
			t.Fatalf("signature %s, the official GetRPCSignature gives %s\nour string to sign: %q", got, want, acs.V1StringToSign(method, params))
		}
	})
}

// TestOfficialParameterNames pins disagreement 3: the official code signs
// V3 parameter names unencoded, we sign them encoded, and that is the only
// difference (the official code given encoded names agrees with us).
func TestOfficialParameterNames(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name  string
		param string
		agree bool // whether the official code, given the raw name, agrees
	}{
		{"real name", "RegionId", true},
		{"nested real name", "Tag.1.Key", true},
		{"space", "a b", false},
		{"slash", "a/b", false},
		{"non-ASCII", "镜像", false},
		// The official code's final replacement of * by %2A reaches names too.
		{"star", "a*b", true},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// One parameter: the order of several reserved names differs on
			// its own (see 3 above; compareV3 handles it).
			params := url.Values{tc.param: {"v"}}
			header := http.Header{"X-Acs-Action": {"DescribeImageModifiedRecords"}}
			sig, signed := acs.V3Request{Method: "POST", Host: "h", Query: params, Header: header, HashedPayload: acs.EmptyPayloadHash}.Signature("s")
			ours := acs.V3Authorization(officialKeyID, signed, sig)

			raw := &tea.Request{
				Method: tea.String("POST"), Pathname: tea.String("/"),
				Query:   map[string]*string{tc.param: tea.String("v")},
				Headers: map[string]*string{"host": tea.String("h"), "x-acs-action": tea.String("DescribeImageModifiedRecords")},
			}
			official := tea.StringValue(openapiutil.GetAuthorization(raw, tea.String(acs.V3Algorithm),
				tea.String(acs.EmptyPayloadHash), tea.String(officialKeyID), tea.String("s")))
			if (ours == official) != tc.agree {
				t.Errorf("official with the raw name %q: agree = %v, want %v", tc.param, ours == official, tc.agree)
			}
			if encoded := officialV3(t, "POST", "h", params, map[string]string{"x-acs-action": "DescribeImageModifiedRecords"}, acs.EmptyPayloadHash, "s"); encoded != ours {
				t.Errorf("official with the encoded name:\n%s\nours:\n%s", encoded, ours)
			}
		})
	}
}
