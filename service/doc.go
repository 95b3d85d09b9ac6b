// Package service implements ecd.imagerecords.v1.ImageRecordsService on top
// of the upstream client: it validates requests before any upstream call,
// converts upstream pages to typed records, streams every page of a desktop
// with backpressure, and maps upstream failures to Connect codes with
// google.rpc error details. It knows nothing about HTTP servers or signing.
package service
