package upstream_test

import (
	"net/url"
	"testing"

	"github.com/imagerecords/imagerecords/upstream"
)

// The vectors below were checked against the official SDK's signing
// functions; they pin our canonicalisation byte for byte.

func TestV3Vectors(t *testing.T) {
	t.Parallel()
	baseHeaders := func(host, action, version string) map[string]string {
		return map[string]string{
			"host":                  host,
			"x-acs-action":          action,
			"x-acs-version":         version,
			"x-acs-date":            "2023-10-26T10:22:32Z",
			"x-acs-signature-nonce": "3156853299f313e23d1673dc12e1703d",
			"x-acs-content-sha256":  upstream.EmptyPayloadHash,
		}
	}
	ecdQuery := url.Values{
		"DesktopId":  {"ecd-bd53sfmysz8ir****"},
		"MaxResults": {"10"},
		"NextToken":  {"AAAAAV3MpHK1AP0pfERHZN5pu6l3d+SWeOobbIlDLjwhjkTk"},
		"RegionId":   {"cn-hangzhou"},
	}
	stsHeaders := baseHeaders("ecd.cn-hangzhou.aliyuncs.com", "DescribeImageModifiedRecords", "2020-09-30")
	stsHeaders["x-acs-accesskey-id"] = "STS.YourAccessKeyId"
	stsHeaders["x-acs-security-token"] = "STS.tok"

	testCases := []struct {
		name          string
		req           upstream.V3Request
		hashed        string // hex SHA-256 of the canonical request; empty: not published
		signature     string // empty: not published
		signedHeaders string
	}{
		{
			name: "A published RunInstances",
			req: upstream.V3Request{
				Method: "POST",
				Query: url.Values{
					"ImageId":  {"win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd"},
					"RegionId": {"cn-shanghai"},
				},
				Headers:       baseHeaders("ecs.cn-shanghai.aliyuncs.com", "RunInstances", "2014-05-26"),
				HashedPayload: upstream.EmptyPayloadHash,
			},
			hashed:        "7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259",
			signature:     "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0",
			signedHeaders: "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version",
		},
		{
			name: "B DescribeImageModifiedRecords",
			req: upstream.V3Request{
				Method:        "POST",
				Query:         ecdQuery,
				Headers:       baseHeaders("ecd.cn-hangzhou.aliyuncs.com", "DescribeImageModifiedRecords", "2020-09-30"),
				HashedPayload: upstream.EmptyPayloadHash,
			},
			signature:     "488b2b23ef974fd5e72432851bd269b98dbf98e7794126a2f426e510f345df78",
			signedHeaders: "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version",
		},
		{
			name: "C STS",
			req: upstream.V3Request{
				Method:        "POST",
				Query:         ecdQuery,
				Headers:       stsHeaders,
				HashedPayload: upstream.EmptyPayloadHash,
			},
			signature:     "72798068708cd9d2ca60631062a8da08e572bfb45d8718f47e6c72d253577706",
			signedHeaders: "host;x-acs-accesskey-id;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-security-token;x-acs-signature-nonce;x-acs-version",
		},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			canonical, _ := tc.req.CanonicalRequest()
			if tc.hashed != "" {
				if got := upstream.HashCanonicalRequest(canonical); got != tc.hashed {
					t.Errorf("hashed canonical request = %s, want %s\ncanonical:\n%s", got, tc.hashed, canonical)
				}
			}
			sig, signed := tc.req.Sign("YourAccessKeySecret")
			if sig != tc.signature {
				t.Errorf("signature = %s, want %s\ncanonical:\n%s", sig, tc.signature, canonical)
			}
			if signed != tc.signedHeaders {
				t.Errorf("signed headers = %s, want %s", signed, tc.signedHeaders)
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
	ecd.Set("DesktopId", "ecd-bd53sfmysz8ir****")
	ecd.Set("MaxResults", "10")
	ecd.Set("NextToken", "AAAAAV3MpHK1AP0pfERHZN5pu6l3d+SWeOobbIlDLjwhjkTk")
	ecd.Set("RegionId", "cn-hangzhou")

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
			if got := upstream.V1Signature("testsecret", tc.method, tc.params); got != tc.want {
				t.Errorf("signature = %s, want %s\nstring to sign: %s", got, tc.want, upstream.V1StringToSign(tc.method, tc.params))
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
		{"", ""},
	}
	for _, tc := range testCases {
		if got := upstream.PercentEncode(tc.in); got != tc.want {
			t.Errorf("PercentEncode(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
