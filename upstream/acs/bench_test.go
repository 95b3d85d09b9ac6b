package acs_test

import (
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/imagerecords/imagerecords/upstream/acs"
)

// Benchmarks of signing one follow-up page request, as the client does
// once per attempt.
//
//	go test -run '^$' -bench . -benchmem ./upstream/acs

// benchCall is a follow-up page request: a full page and a NextToken with
// the length and alphabet of a real one.
func benchCall() acs.Call {
	return acs.Call{
		Action:  "DescribeImageModifiedRecords",
		Version: "2020-09-30",
		Params: url.Values{
			"RegionId":   {"cn-hangzhou"},
			"DesktopId":  {"ecd-bd53sfmysz8ir0001"},
			"MaxResults": {"100"},
			"NextToken":  {"AAAAAV3MpHK1AP0pfERHZN5pu6mEB1N1ifDgTG7k6ssWt7Jm9yvTmSBe8FBQ3rVtmQ=="},
		},
		Timestamp: time.Date(2026, 11, 28, 9, 55, 0, 0, time.UTC),
		Nonce:     "3f2a9c1b7d5e4f60a8b9c0d1e2f30415",
	}
}

var benchCreds = acs.Credentials{AccessKeyID: "LTAI5tBenchmarkKey01", AccessKeySecret: "bench-secret-0123456789abcdefghij"}

func BenchmarkV3Sign(b *testing.B) {
	call := benchCall()
	b.ReportAllocs()
	for b.Loop() {
		_, _ = call.SignV3("ecd.cn-hangzhou.aliyuncs.com", benchCreds)
	}
}

func BenchmarkV1Sign(b *testing.B) {
	call := benchCall()
	b.ReportAllocs()
	for b.Loop() {
		_ = call.SignV1(http.MethodPost, benchCreds)
	}
}
