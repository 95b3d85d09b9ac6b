package ecdsim

import (
	"fmt"
	"net/http"
	"slices"
)

// defaultRegions are the region ids ECD's endpoint documentation for API
// version 2020-09-30 (and 2020-10-02) lists in Asia Pacific. The
// documentation also has a Europe and Americas section, which is left out
// because its ids could not be confirmed.
var defaultRegions = [...]string{
	"cn-hangzhou", "cn-shanghai", "cn-beijing", "cn-qingdao", "cn-zhangjiakou",
	"cn-wulanchabu", "cn-nanjing", "cn-shenzhen", "cn-guangzhou", "cn-chengdu",
	"cn-hongkong", "ap-northeast-1", "ap-southeast-1", "ap-southeast-2",
	"ap-southeast-5", "ap-southeast-6", "ap-southeast-7",
}

// DefaultRegions returns the regions a simulator serves when
// [Config.Regions] is empty: the ECD regions of Asia Pacific, cn-hangzhou
// first.
func DefaultRegions() []string { return slices.Clone(defaultRegions[:]) }

// errUnknownRegion is the answer to a RegionId the simulator does not
// serve. Alibaba Cloud's API gateway answers an unknown region with this
// code and message, and with HTTP 404 (observed, e.g., in
// alibaba/terraform-provider#787); a client must map on the code.
func errUnknownRegion() *apiError {
	return &apiError{status: http.StatusNotFound, code: "InvalidRegionId", kind: kindBad,
		msg: "The specified region does not exist."}
}

// checkRegion reports whether id can be a region id: 1 to 32 lower-case
// letters, digits and hyphens.
func checkRegion(id string) error {
	if id == "" || len(id) > 32 {
		return fmt.Errorf("ecdsim: region id %q is empty or longer than 32 bytes", id)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return fmt.Errorf("ecdsim: region id %q has a character other than a-z, 0-9 and -", id)
		}
	}
	return nil
}

// hostRegion returns region if the simulator serves it, else its first
// region, for the HostId of errors.
func (s *Simulator) hostRegion(region string) string {
	if s.regions[region] {
		return region
	}
	return s.regionList[0]
}
