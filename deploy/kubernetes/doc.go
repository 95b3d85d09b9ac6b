// Package kubernetes holds the gateway's Kubernetes manifests (a kustomize
// base in base/ and overlays in overlays/) and, in its tests, renders them
// with the kustomize API, decodes every object strictly into the
// k8s.io/api types and cross-checks them against the gateway's real flags
// and termination timeline. It is a module of its own so that the
// Kubernetes libraries stay out of the gateway's go.mod:
//
//	cd deploy/kubernetes && go test -v ./...
package kubernetes
