package ecdsim_test

import (
	"net/url"
	"slices"
	"testing"

	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

func TestRegions(t *testing.T) {
	t.Parallel()
	def := newSim(t, ecdsim.Config{Seed: 1})
	custom := newSim(t, ecdsim.Config{Seed: 1, Regions: []string{"eu-central-1", "cn-hangzhou"}})
	id := desktopWith(t, def, 42)
	testCases := []struct {
		name   string
		sim    *ecdsim.Simulator
		region string
		ok     bool
	}{
		{"default cn-hangzhou", def, "cn-hangzhou", true},
		{"default cn-hongkong", def, "cn-hongkong", true},
		{"default ap-southeast-1", def, "ap-southeast-1", true},
		{"default unknown", def, "cn-nowhere-9", false},
		{"default not ECD's", def, "us-west-1", false},
		{"default upper case", def, "CN-HANGZHOU", false},
		{"default zone, not region", def, "cn-hangzhou-b", false},
		{"custom eu-central-1", custom, "eu-central-1", true},
		{"custom cn-hangzhou", custom, "cn-hangzhou", true},
		{"custom cn-shanghai", custom, "cn-shanghai", false},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := url.Values{"RegionId": {tc.region}, "DesktopId": {id}}
			if tc.ok {
				pg := mustPage(t, tc.sim, call{key: longKey, params: p})
				if pg.TotalCount != 42 || len(pg.ImageModifiedRecords) != 10 {
					t.Fatalf("TotalCount %d, %d records", pg.TotalCount, len(pg.ImageModifiedRecords))
				}
				return
			}
			w := serve(tc.sim, call{key: longKey, params: p}.request(t))
			var e apiError
			decodeStrict(t, w.Body.Bytes(), &e)
			// HostId names the first served region when the request's is not
			// served.
			host := "ecd." + tc.sim.Regions()[0] + ".aliyuncs.com"
			if w.Code != 404 || e.Code != "InvalidRegionId" || e.Message != "The specified region does not exist." || e.HostID != host ||
				e.Recommend != "https://api.aliyun.com/troubleshoot?q=InvalidRegionId&product=ecd" {
				t.Fatalf("got %d %s", w.Code, w.Body)
			}
		})
	}
	// The region is checked before the desktop.
	mustFail(t, def, call{key: longKey, params: url.Values{"RegionId": {"mars-1"}, "DesktopId": {"ecd-none"}}}.request(t), 404, "InvalidRegionId")
	if st := def.Stats(); st.BadRequests == 0 {
		t.Fatalf("InvalidRegionId is not counted as a bad request: %+v", st)
	}
}

func TestDefaultRegions(t *testing.T) {
	t.Parallel()
	regions := ecdsim.DefaultRegions()
	for _, want := range []string{"cn-hangzhou", "cn-shanghai", "cn-beijing", "cn-shenzhen", "cn-hongkong", "ap-southeast-1"} {
		if !slices.Contains(regions, want) {
			t.Errorf("DefaultRegions lacks %s", want)
		}
	}
	if regions[0] != "cn-hangzhou" {
		t.Errorf("first default region %s, want cn-hangzhou", regions[0])
	}
	regions[0] = "changed"
	if ecdsim.DefaultRegions()[0] != "cn-hangzhou" {
		t.Error("DefaultRegions returns shared storage")
	}
	if got := newSim(t, ecdsim.Config{Seed: 1}).Regions(); !slices.Equal(got, ecdsim.DefaultRegions()) {
		t.Errorf("Regions() = %v with no Config.Regions", got)
	}
}
