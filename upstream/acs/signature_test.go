package acs_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/imagerecords/imagerecords/upstream/acs"
)

// The vectors below were checked against the official SDK's signing
// functions; they pin our canonicalisation byte for byte.

// Published vectors A-C of signature V3 (ECD_API.md), with the secret
// YourAccessKeySecret.
const (
	vectorDate  = "2023-10-26T10:22:32Z"
	vectorNonce = "3156853299f313e23d1673dc12e1703d"
	vectorB     = "488b2b23ef974fd5e72432851bd269b98dbf98e7794126a2f426e510f345df78"
	vectorC     = "72798068708cd9d2ca60631062a8da08e572bfb45d8718f47e6c72d253577706"
	plainSigned = "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
	stsSigned   = "host;x-acs-accesskey-id;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-security-token;x-acs-signature-nonce;x-acs-version"
)

// ecdQuery are the parameters of vectors B, C and E.
func ecdQuery() url.Values {
	return url.Values{
		"DesktopId":  {"ecd-bd53sfmysz8ir****"},
		"MaxResults": {"10"},
		"NextToken":  {"AAAAAV3MpHK1AP0pfERHZN5pu6l3d+SWeOobbIlDLjwhjkTk"},
		"RegionId":   {"cn-hangzhou"},
	}
}

func TestV3Vectors(t *testing.T) {
	t.Parallel()
	baseHeader := func(action, version string) http.Header {
		return http.Header{
			"X-Acs-Action":          {action},
			"X-Acs-Version":         {version},
			"X-Acs-Date":            {vectorDate},
			"X-Acs-Signature-Nonce": {vectorNonce},
			"X-Acs-Content-Sha256":  {acs.EmptyPayloadHash},
			// Not signed: neither x-acs-* nor content-type.
			"Accept": {"application/json"},
		}
	}
	stsHeader := baseHeader("DescribeImageModifiedRecords", "2020-09-30")
	stsHeader.Set("x-acs-accesskey-id", "STS.YourAccessKeyId")
	stsHeader.Set("x-acs-security-token", "STS.tok")

	testCases := []struct {
		name          string
		req           acs.V3Request
		hashed        string // hex SHA-256 of the canonical request; empty: not published
		signature     string
		signedHeaders string
	}{
		{
			name: "A published RunInstances",
			req: acs.V3Request{
				Method: "POST",
				Host:   "ecs.cn-shanghai.aliyuncs.com",
				Query: url.Values{
					"ImageId":  {"win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd"},
					"RegionId": {"cn-shanghai"},
				},
				Header:        baseHeader("RunInstances", "2014-05-26"),
				HashedPayload: acs.EmptyPayloadHash,
			},
			hashed:        "7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259",
			signature:     "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0",
			signedHeaders: plainSigned,
		},
		{
			name: "B DescribeImageModifiedRecords",
			req: acs.V3Request{
				Method:        "POST",
				Host:          "ecd.cn-hangzhou.aliyuncs.com",
				Query:         ecdQuery(),
				Header:        baseHeader("DescribeImageModifiedRecords", "2020-09-30"),
				HashedPayload: acs.EmptyPayloadHash,
			},
			signature:     vectorB,
			signedHeaders: plainSigned,
		},
		{
			name: "C STS",
			req: acs.V3Request{
				Method:        "POST",
				Host:          "ecd.cn-hangzhou.aliyuncs.com",
				Query:         ecdQuery(),
				Header:        stsHeader,
				HashedPayload: acs.EmptyPayloadHash,
			},
			signature:     vectorC,
			signedHeaders: stsSigned,
		},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			canonical, _ := tc.req.CanonicalRequest()
			if tc.hashed != "" {
				if sum := sha256.Sum256([]byte(canonical)); hex.EncodeToString(sum[:]) != tc.hashed {
					t.Errorf("hashed canonical request = %x, want %s\ncanonical:\n%s", sum, tc.hashed, canonical)
				}
			}
			sig, signed := tc.req.Signature("YourAccessKeySecret")
			if sig != tc.signature {
				t.Errorf("signature = %s, want %s\ncanonical:\n%s", sig, tc.signature, canonical)
			}
			if signed != tc.signedHeaders {
				t.Errorf("signed headers = %s, want %s", signed, tc.signedHeaders)
			}
		})
	}
}

// TestCallSignV3 checks that Call.SignV3, what the client and the bench
// send, reproduces vectors B and C: the headers, the Authorization and a
// query string that parses back to the parameters.
func TestCallSignV3(t *testing.T) {
	t.Parallel()
	date, err := time.Parse(acs.TimestampLayout, vectorDate)
	if err != nil {
		t.Fatal(err)
	}
	testCases := []struct {
		name      string
		creds     acs.Credentials
		signed    string
		signature string
	}{
		{"B long-term key", acs.Credentials{AccessKeyID: "YourAccessKeyId", AccessKeySecret: "YourAccessKeySecret"}, plainSigned, vectorB},
		{"C STS key", acs.Credentials{AccessKeyID: "STS.YourAccessKeyId", AccessKeySecret: "YourAccessKeySecret", SecurityToken: "STS.tok"}, stsSigned, vectorC},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			params := ecdQuery()
			call := acs.Call{
				Action: "DescribeImageModifiedRecords", Version: "2020-09-30", Params: params,
				// Any zone: the signature dates in UTC.
				Timestamp: date.In(time.FixedZone("UTC+8", 8*3600)),
				Nonce:     vectorNonce,
			}
			rawQuery, header := call.SignV3("ecd.cn-hangzhou.aliyuncs.com", tc.creds)
			want := acs.V3Authorization(tc.creds.AccessKeyID, tc.signed, tc.signature)
			if got := header.Get("Authorization"); got != want {
				t.Errorf("Authorization = %s\nwant            %s", got, want)
			}
			if got := header.Get("x-acs-date"); got != vectorDate {
				t.Errorf("x-acs-date = %s, want %s", got, vectorDate)
			}
			if got := header.Get("x-acs-security-token"); got != tc.creds.SecurityToken {
				t.Errorf("x-acs-security-token = %q, want %q", got, tc.creds.SecurityToken)
			}
			if header.Get("Host") != "" {
				t.Errorf("header carries Host %q; it belongs to the URL", header.Get("Host"))
			}
			parsed, err := url.ParseQuery(rawQuery)
			if err != nil || !reflect.DeepEqual(parsed, ecdQuery()) {
				t.Errorf("query %q parses to %v (%v), want %v", rawQuery, parsed, err, ecdQuery())
			}
			if !reflect.DeepEqual(params, ecdQuery()) {
				t.Errorf("SignV3 changed the parameters: %v", params)
			}
		})
	}
}

// TestCallSignV1 checks that Call.SignV1 reproduces vector E with the
// signature last, and that the body parses back to every parameter.
func TestCallSignV1(t *testing.T) {
	t.Parallel()
	date, err := time.Parse(acs.TimestampLayout, "2016-02-23T12:46:24Z")
	if err != nil {
		t.Fatal(err)
	}
	params := ecdQuery()
	call := acs.Call{
		Action: "DescribeImageModifiedRecords", Version: "2020-09-30", Params: params,
		Timestamp: date, Nonce: "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
	}
	testCases := []struct {
		name  string
		creds acs.Credentials
		want  url.Values // beyond ecdQuery and the common parameters
	}{
		{"E long-term key", acs.Credentials{AccessKeyID: "testid", AccessKeySecret: "testsecret"},
			url.Values{"Signature": {"vLbfKk4vRLqgcRuZzoBefJVhkF8="}}},
		{"STS key", acs.Credentials{AccessKeyID: "testid", AccessKeySecret: "testsecret", SecurityToken: "CAIS+tok/="},
			url.Values{"SecurityToken": {"CAIS+tok/="}}},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			body := call.SignV1(http.MethodPost, tc.creds)
			if !strings.HasPrefix(body[strings.LastIndex(body, "&")+1:], "Signature=") {
				t.Errorf("body %q does not end with the signature", body)
			}
			got, err := url.ParseQuery(body)
			if err != nil {
				t.Fatalf("body %q: %v", body, err)
			}
			want := ecdQuery()
			for k, v := range map[string]string{
				"Action": "DescribeImageModifiedRecords", "Version": "2020-09-30", "Format": "JSON",
				"AccessKeyId": "testid", "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0",
				"SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf", "Timestamp": "2016-02-23T12:46:24Z",
			} {
				want.Set(k, v)
			}
			for k, v := range tc.want {
				want[k] = v
			}
			sig := got.Get("Signature")
			if _, ok := tc.want["Signature"]; !ok {
				want.Set("Signature", sig) // no published vector: checked below
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("body parses to\n%v\nwant\n%v", got, want)
			}
			got.Del("Signature")
			if v := acs.V1Signature(tc.creds.AccessKeySecret, http.MethodPost, got); v != sig {
				t.Errorf("Signature %s does not verify (want %s)", sig, v)
			}
			if !reflect.DeepEqual(params, ecdQuery()) {
				t.Errorf("SignV1 changed the parameters: %v", params)
			}
		})
	}
}

func TestV1Vectors(t *testing.T) {
	t.Parallel()
	common := func() url.Values {
		return url.Values{
			"AccessKeyId":      {"testid"},
			"SignatureMethod":  {"HMAC-SHA1"},
			"SignatureNonce":   {"3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"},
			"SignatureVersion": {"1.0"},
			"Timestamp":        {"2016-02-23T12:46:24Z"},
		}
	}
	describeRegions := common()
	describeRegions.Set("Action", "DescribeRegions")
	describeRegions.Set("Format", "XML")
	describeRegions.Set("Version", "2014-05-26")

	ecd := common()
	ecd.Set("Action", "DescribeImageModifiedRecords")
	ecd.Set("Format", "JSON")
	ecd.Set("Version", "2020-09-30")
	for k, v := range ecdQuery() {
		ecd[k] = v
	}

	testCases := []struct {
		name   string
		method string
		params url.Values
		want   string
	}{
		{name: "D published GET", method: "GET", params: describeRegions, want: "OLeaidS1JvxuMvnyHOwuJ+uX5qY="},
		{name: "D published POST", method: "POST", params: describeRegions, want: "MxbnVAM4w6sft9xjVpe/GCKueuk="},
		{name: "E DescribeImageModifiedRecords POST", method: "POST", params: ecd, want: "vLbfKk4vRLqgcRuZzoBefJVhkF8="},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := acs.V1Signature("testsecret", tc.method, tc.params); got != tc.want {
				t.Errorf("signature = %s, want %s\nstring to sign: %s", got, tc.want, acs.V1StringToSign(tc.method, tc.params))
			}
		})
	}
}

func TestPercentEncode(t *testing.T) {
	t.Parallel()
	testCases := []struct{ in, want string }{
		{"abcXYZ019-_.~", "abcXYZ019-_.~"},
		{"a b", "a%20b"},
		{"a+b/c=d", "a%2Bb%2Fc%3Dd"},
		{"*", "%2A"},
		{"ecd-bd53sfmysz8ir****", "ecd-bd53sfmysz8ir%2A%2A%2A%2A"},
		{"镜像", "%E9%95%9C%E5%83%8F"},
		{"%7E\xab", "%257E%AB"},
		{"", ""},
	}
	for _, tc := range testCases {
		if got := acs.PercentEncode(tc.in); got != tc.want {
			t.Errorf("PercentEncode(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseV3Authorization(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name            string
		header          string
		id, signed, sig string
		ok              bool
	}{
		{"as formatted", acs.V3Authorization("LTAI", "host;x-acs-date", "ab12"), "LTAI", "host;x-acs-date", "ab12", true},
		{"blanks after commas", "ACS3-HMAC-SHA256 Credential=LTAI, SignedHeaders=host, Signature=ab12", "LTAI", "host", "ab12", true},
		{"parts in another order", "ACS3-HMAC-SHA256 Signature=ab12,Credential=LTAI,SignedHeaders=host", "LTAI", "host", "ab12", true},
		{"no signature", "ACS3-HMAC-SHA256 Credential=LTAI,SignedHeaders=host", "LTAI", "host", "", false},
		{"other algorithm", "ACS3-HMAC-SM3 Credential=LTAI,SignedHeaders=host,Signature=ab12", "", "", "", false},
		{"no space after the algorithm", "ACS3-HMAC-SHA256Credential=LTAI,SignedHeaders=host,Signature=ab12", "", "", "", false},
		{"empty", "", "", "", "", false},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			id, signed, sig, ok := acs.ParseV3Authorization(tc.header)
			if id != tc.id || signed != tc.signed || sig != tc.sig || ok != tc.ok {
				t.Errorf("ParseV3Authorization(%q) = %q, %q, %q, %v; want %q, %q, %q, %v",
					tc.header, id, signed, sig, ok, tc.id, tc.signed, tc.sig, tc.ok)
			}
		})
	}
}

func TestCredentialsFormatRedacted(t *testing.T) {
	t.Parallel()
	creds := acs.Credentials{AccessKeyID: "LTAIvisible", AccessKeySecret: "the-secret", SecurityToken: "the-token"}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		got := fmt.Sprintf(verb, creds)
		if !strings.Contains(got, "LTAIvisible") || strings.Contains(got, "the-secret") || strings.Contains(got, "the-token") {
			t.Errorf("%s formats as %q", verb, got)
		}
	}
}
