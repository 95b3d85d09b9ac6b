package kubernetes_test

import (
	"io"
	"maps"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/imagerecords/imagerecords/service/gateway"
)

// rendered is one kustomization's output, decoded.
type rendered struct {
	names          []string // kind/name, in kustomize's order
	deployment     *appsv1.Deployment
	service        *corev1.Service
	serviceAccount *corev1.ServiceAccount
	pdb            *policyv1.PodDisruptionBudget
	hpa            *autoscalingv2.HorizontalPodAutoscaler
	networkPolicy  *networkingv1.NetworkPolicy
	configMaps     map[string]*corev1.ConfigMap
}

// render runs kustomize on dir and decodes every object strictly: a field
// the k8s.io/api type does not have (a typo, a wrong indentation) fails.
func render(t *testing.T, dir string) *rendered {
	t.Helper()
	resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	r := &rendered{configMaps: map[string]*corev1.ConfigMap{}}
	for _, res := range resMap.Resources() {
		b, err := res.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		apiVersion, kind := res.GetApiVersion(), res.GetKind()
		var obj any
		switch apiVersion + " " + kind {
		case "apps/v1 Deployment":
			r.deployment = new(appsv1.Deployment)
			obj = r.deployment
		case "v1 Service":
			r.service = new(corev1.Service)
			obj = r.service
		case "v1 ServiceAccount":
			r.serviceAccount = new(corev1.ServiceAccount)
			obj = r.serviceAccount
		case "policy/v1 PodDisruptionBudget":
			r.pdb = new(policyv1.PodDisruptionBudget)
			obj = r.pdb
		case "autoscaling/v2 HorizontalPodAutoscaler":
			r.hpa = new(autoscalingv2.HorizontalPodAutoscaler)
			obj = r.hpa
		case "networking.k8s.io/v1 NetworkPolicy":
			r.networkPolicy = new(networkingv1.NetworkPolicy)
			obj = r.networkPolicy
		case "v1 ConfigMap":
			cm := new(corev1.ConfigMap)
			r.configMaps[res.GetName()] = cm
			obj = cm
		default:
			t.Fatalf("%s renders %s %s, which this test does not know", dir, apiVersion, kind)
		}
		if err := yaml.UnmarshalStrict(b, obj); err != nil {
			t.Fatalf("%s: %s %s does not decode strictly: %v\n%s", dir, kind, res.GetName(), err, b)
		}
		r.names = append(r.names, kind+"/"+res.GetName())
	}
	for what, missing := range map[string]bool{
		"Deployment": r.deployment == nil, "Service": r.service == nil, "ServiceAccount": r.serviceAccount == nil,
		"PodDisruptionBudget": r.pdb == nil, "HorizontalPodAutoscaler": r.hpa == nil, "NetworkPolicy": r.networkPolicy == nil,
	} {
		if missing {
			t.Errorf("%s renders no %s", dir, what)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return r
}

func TestBase(t *testing.T) {
	r := render(t, "base")
	t.Logf("kustomize build base: %s", strings.Join(r.names, ", "))
	check(t, r)
}

func TestRedisQuotaOverlay(t *testing.T) {
	r := render(t, "overlays/redis-quota")
	t.Logf("kustomize build overlays/redis-quota: %s", strings.Join(r.names, ", "))
	check(t, r)
	if _, ok := envOf(gatewayContainer(t, r.deployment))["IMAGERECORDS_QUOTA_REDIS"]; !ok {
		t.Error("the redis-quota overlay does not set IMAGERECORDS_QUOTA_REDIS")
	}
}

// check cross-checks the objects of one rendering.
func check(t *testing.T, r *rendered) {
	d := r.deployment
	pod := d.Spec.Template
	c := gatewayContainer(t, d)
	cfg := gatewayConfig(t, c, r.configMaps)
	ports := map[string]corev1.ContainerPort{}
	for _, p := range c.Ports {
		ports[p.Name] = p
	}

	t.Run("replicas and selectors", func(t *testing.T) {
		if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
			t.Errorf("Deployment replicas %v, want at least 2", d.Spec.Replicas)
		}
		podLabels := labels.Set(pod.Labels)
		selects := func(what string, sel *metav1.LabelSelector) {
			s, err := metav1.LabelSelectorAsSelector(sel)
			if err != nil || s.Empty() || !s.Matches(podLabels) {
				t.Errorf("%s selector %v does not select the pods (%v): %v", what, sel, podLabels, err)
			}
		}
		selects("Deployment", d.Spec.Selector)
		selects("PodDisruptionBudget", r.pdb.Spec.Selector)
		selects("NetworkPolicy", &r.networkPolicy.Spec.PodSelector)
		if s := labels.SelectorFromSet(r.service.Spec.Selector); len(r.service.Spec.Selector) == 0 || !s.Matches(podLabels) {
			t.Errorf("Service selector %v does not select the pods (%v)", r.service.Spec.Selector, podLabels)
		}
		if u := r.pdb.Spec.MaxUnavailable; u == nil || u.IntValue() != 1 {
			t.Errorf("PodDisruptionBudget maxUnavailable %v, want 1", u)
		}
		h := r.hpa.Spec
		if h.ScaleTargetRef.Kind != "Deployment" || h.ScaleTargetRef.Name != d.Name || h.ScaleTargetRef.APIVersion != "apps/v1" {
			t.Errorf("HorizontalPodAutoscaler targets %+v, not the Deployment %s", h.ScaleTargetRef, d.Name)
		}
		if h.MinReplicas == nil || *h.MinReplicas < *d.Spec.Replicas || h.MaxReplicas < *h.MinReplicas {
			t.Errorf("HorizontalPodAutoscaler replicas %v..%d, want at least the Deployment's %d", h.MinReplicas, h.MaxReplicas, *d.Spec.Replicas)
		}
	})

	t.Run("ports", func(t *testing.T) {
		if p, ok := ports["grpc"]; !ok || strconv.Itoa(int(p.ContainerPort)) != portOf(t, cfg.Listen) {
			t.Errorf("container port grpc %+v is not the port of IMAGERECORDS_LISTEN %s", p, cfg.Listen)
		}
		if p, ok := ports["admin"]; !ok || strconv.Itoa(int(p.ContainerPort)) != portOf(t, cfg.AdminListen) {
			t.Errorf("container port admin %+v is not the port of IMAGERECORDS_ADMIN_LISTEN %s", p, cfg.AdminListen)
		}
		if host, _, _ := net.SplitHostPort(cfg.Listen); host != "0.0.0.0" && host != "" && host != "::" {
			t.Errorf("IMAGERECORDS_LISTEN %s is not reachable from other pods", cfg.Listen)
		}
		if pod.Annotations["prometheus.io/port"] != portOf(t, cfg.AdminListen) {
			t.Errorf("prometheus.io/port %q is not the admin port", pod.Annotations["prometheus.io/port"])
		}
		if len(r.service.Spec.Ports) != 1 {
			t.Fatalf("Service ports %+v, want the API port only", r.service.Spec.Ports)
		}
		sp := r.service.Spec.Ports[0]
		if _, ok := ports[sp.TargetPort.String()]; sp.TargetPort.Type != intstr.String || !ok {
			t.Errorf("Service targetPort %v names no container port", sp.TargetPort)
		}
		if sp.AppProtocol == nil || *sp.AppProtocol != "kubernetes.io/h2c" {
			t.Errorf("Service appProtocol %v, want kubernetes.io/h2c", sp.AppProtocol)
		}
	})

	t.Run("probes", func(t *testing.T) {
		api := portOf(t, cfg.Listen)
		for _, p := range []struct {
			name    string
			probe   *corev1.Probe
			service string
		}{
			{"startupProbe", c.StartupProbe, gateway.LivenessService},
			{"livenessProbe", c.LivenessProbe, gateway.LivenessService},
			{"readinessProbe", c.ReadinessProbe, gateway.ReadinessService},
		} {
			if p.probe == nil || p.probe.GRPC == nil {
				t.Errorf("%s is not a gRPC probe: %+v", p.name, p.probe)
				continue
			}
			if strconv.Itoa(int(p.probe.GRPC.Port)) != api {
				t.Errorf("%s asks port %d, not the API port %s", p.name, p.probe.GRPC.Port, api)
			}
			if got := p.probe.GRPC.Service; got == nil || *got != p.service {
				t.Errorf("%s asks service %v, want %q", p.name, got, p.service)
			}
			if p.probe.TimeoutSeconds >= p.probe.PeriodSeconds && p.probe.PeriodSeconds > 1 {
				t.Errorf("%s timeout %ds is not below its period %ds", p.name, p.probe.TimeoutSeconds, p.probe.PeriodSeconds)
			}
		}
	})

	t.Run("termination", func(t *testing.T) {
		if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
			t.Fatal("no preStop sleep: the pod would stop accepting before kube-proxy and the mesh withdraw it")
		}
		preStop := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
		grace := time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
		need := preStop + cfg.MaxExitTime()
		t.Logf("preStop %v + drain delay %v + shutdown grace %v + final statuses and telemetry flush = %v < terminationGracePeriodSeconds %v",
			preStop, cfg.DrainDelay, cfg.ShutdownGrace, need, grace)
		if cfg.DrainDelay <= 0 {
			t.Error("IMAGERECORDS_DRAIN_DELAY is not set: calls would be refused while endpoints are still being withdrawn")
		}
		if need >= grace {
			t.Errorf("the worst-case exit (%v) does not fit terminationGracePeriodSeconds (%v): the kubelet would kill the drain", need, grace)
		}
	})

	t.Run("security", func(t *testing.T) {
		ps := pod.Spec.SecurityContext
		if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("pod securityContext %+v is not restricted", ps)
		}
		s := c.SecurityContext
		if s == nil || s.AllowPrivilegeEscalation == nil || *s.AllowPrivilegeEscalation ||
			s.ReadOnlyRootFilesystem == nil || !*s.ReadOnlyRootFilesystem ||
			s.RunAsNonRoot == nil || !*s.RunAsNonRoot ||
			s.Capabilities == nil || !slices.Equal(s.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(s.Capabilities.Add) > 0 ||
			s.SeccompProfile == nil || s.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("container securityContext %+v is not restricted", s)
		}
		uid := imageUser(t)
		if s == nil || s.RunAsUser == nil || strconv.FormatInt(*s.RunAsUser, 10) != uid {
			t.Errorf("container runAsUser is not the image's USER %s", uid)
		}
		if pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
			t.Error("the pod mounts a Kubernetes API token it never uses")
		}
		if pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks {
			t.Error("service links are on: IMAGERECORDS_SERVICE_HOST and friends would share the gateway's variable prefix")
		}
	})

	t.Run("resources", func(t *testing.T) {
		req, lim := c.Resources.Requests, c.Resources.Limits
		for _, q := range []struct {
			what string
			ok   bool
		}{
			{"cpu request", !req.Cpu().IsZero()}, {"memory request", !req.Memory().IsZero()}, {"memory limit", !lim.Memory().IsZero()},
		} {
			if !q.ok {
				t.Errorf("no %s", q.what)
			}
		}
		memLimit := lim.Memory().Value()
		gomem, ok := envOf(c)["GOMEMLIMIT"]
		if !ok {
			t.Fatal("no GOMEMLIMIT: the Go heap would not know the memory limit")
		}
		b := goMemLimit(t, gomem.Value)
		if b >= memLimit || b < memLimit*3/4 {
			t.Errorf("GOMEMLIMIT %s (%d bytes) is not just below the memory limit %s", gomem.Value, b, lim.Memory())
		}
	})

	t.Run("credentials", func(t *testing.T) {
		sa := r.serviceAccount
		if pod.Spec.ServiceAccountName != sa.Name {
			t.Errorf("the pods run as %q, not the ServiceAccount %q", pod.Spec.ServiceAccountName, sa.Name)
		}
		env := envOf(c)
		tokenFile := env["ALIBABA_CLOUD_OIDC_TOKEN_FILE"].Value
		var found bool
		for _, v := range pod.Spec.Volumes {
			if v.Projected == nil {
				continue
			}
			for _, src := range v.Projected.Sources {
				if src.ServiceAccountToken == nil {
					continue
				}
				for _, m := range c.VolumeMounts {
					if m.Name == v.Name && m.MountPath+"/"+src.ServiceAccountToken.Path == tokenFile {
						found = src.ServiceAccountToken.Audience == "sts.aliyuncs.com"
					}
				}
			}
		}
		if !found {
			t.Errorf("ALIBABA_CLOUD_OIDC_TOKEN_FILE %q is no projected ServiceAccount token for sts.aliyuncs.com", tokenFile)
		}
		var rrsa *corev1.ConfigMap
		for _, from := range c.EnvFrom {
			if from.ConfigMapRef != nil {
				rrsa = r.configMaps[from.ConfigMapRef.Name]
			}
		}
		if rrsa == nil {
			t.Fatalf("envFrom names no rendered ConfigMap (%v)", slices.Collect(maps.Keys(r.configMaps)))
		}
		for _, k := range []string{"ALIBABA_CLOUD_ROLE_ARN", "ALIBABA_CLOUD_OIDC_PROVIDER_ARN"} {
			if !strings.HasPrefix(rrsa.Data[k], "acs:ram::") {
				t.Errorf("ConfigMap %s: %s = %q", rrsa.Name, k, rrsa.Data[k])
			}
		}
		keyFile := env["IMAGERECORDS_TOKEN_KEY_FILE"].Value
		ok := false
		for _, v := range pod.Spec.Volumes {
			for _, m := range c.VolumeMounts {
				if v.Secret != nil && m.Name == v.Name && m.ReadOnly && strings.HasPrefix(keyFile, m.MountPath+"/") {
					ok = v.Secret.DefaultMode != nil && *v.Secret.DefaultMode == 0o440
				}
			}
		}
		if !ok {
			t.Errorf("IMAGERECORDS_TOKEN_KEY_FILE %q is not in a read-only Secret volume of mode 0440", keyFile)
		}
	})

	t.Run("telemetry", func(t *testing.T) {
		env := c.Env
		defined := map[string]bool{}
		ref := regexp.MustCompile(`\$\(([A-Z_][A-Z0-9_]*)\)`)
		for _, e := range env {
			for _, m := range ref.FindAllStringSubmatch(e.Value, -1) {
				if !defined[m[1]] {
					t.Errorf("%s refers to $(%s), which no earlier variable defines: Kubernetes would leave it unexpanded", e.Name, m[1])
				}
			}
			defined[e.Name] = true
		}
		attrs := envOf(c)["OTEL_RESOURCE_ATTRIBUTES"].Value
		for _, k := range []string{"service.instance.id=", "k8s.pod.name=$(POD_NAME)", "k8s.namespace.name=$(POD_NAMESPACE)", "k8s.node.name=$(NODE_NAME)"} {
			if !strings.Contains(attrs, k) {
				t.Errorf("OTEL_RESOURCE_ATTRIBUTES %q lacks %s", attrs, k)
			}
		}
		for _, name := range []string{"POD_NAME", "POD_NAMESPACE", "NODE_NAME", "POD_UID"} {
			if e, ok := envOf(c)[name]; !ok || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil {
				t.Errorf("%s is not from the downward API", name)
			}
		}
	})

	t.Run("network policy", func(t *testing.T) {
		np := r.networkPolicy.Spec
		if !slices.Contains(np.PolicyTypes, networkingv1.PolicyTypeIngress) || !slices.Contains(np.PolicyTypes, networkingv1.PolicyTypeEgress) {
			t.Errorf("policyTypes %v, want Ingress and Egress", np.PolicyTypes)
		}
		var ingress []string
		for _, rule := range np.Ingress {
			if len(rule.From) == 0 {
				t.Errorf("an ingress rule admits everyone: %+v", rule)
			}
			for _, p := range rule.Ports {
				if _, ok := ports[p.Port.String()]; !ok {
					t.Errorf("ingress port %v names no container port", p.Port)
				}
				ingress = append(ingress, p.Port.String())
			}
		}
		if !slices.Contains(ingress, "grpc") {
			t.Errorf("ingress ports %v leave out the API port", ingress)
		}
		allowed := map[string]bool{"53/UDP": true, "53/TCP": true, "443/TCP": true, "6379/TCP": true}
		for _, rule := range np.Egress {
			if len(rule.Ports) == 0 {
				t.Errorf("an egress rule allows every port: %+v", rule)
			}
			for _, p := range rule.Ports {
				protocol := corev1.ProtocolTCP // Kubernetes' default
				if p.Protocol != nil {
					protocol = *p.Protocol
				}
				if k := p.Port.String() + "/" + string(protocol); !allowed[k] {
					t.Errorf("egress to %s: only DNS, 443 and Redis are allowed", k)
				}
			}
		}
	})
}

func gatewayContainer(t *testing.T, d *appsv1.Deployment) *corev1.Container {
	t.Helper()
	for i, c := range d.Spec.Template.Spec.Containers {
		if c.Name == "imagerecordsd" {
			return &d.Spec.Template.Spec.Containers[i]
		}
	}
	t.Fatalf("the Deployment has no container imagerecordsd")
	return nil
}

func envOf(c *corev1.Container) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		m[e.Name] = e
	}
	return m
}

// gatewayConfig parses the container's IMAGERECORDS_ variables (from env,
// and from the rendered ConfigMaps of envFrom, which env overrides) and
// arguments as the daemon does at start: every variable must be a real
// flag with a valid value.
func gatewayConfig(t *testing.T, c *corev1.Container, configMaps map[string]*corev1.ConfigMap) gateway.Config {
	t.Helper()
	var environ []string
	for _, from := range c.EnvFrom {
		if from.ConfigMapRef == nil {
			t.Errorf("envFrom %+v is not a ConfigMap: the test cannot check its variables", from)
			continue
		}
		cm, ok := configMaps[from.ConfigMapRef.Name]
		if !ok {
			t.Errorf("envFrom names ConfigMap %s, which the kustomization does not render", from.ConfigMapRef.Name)
			continue
		}
		for k, v := range cm.Data {
			if strings.HasPrefix(from.Prefix+k, gateway.EnvPrefix) {
				environ = append(environ, from.Prefix+k+"="+v)
			}
		}
	}
	for _, e := range c.Env {
		if !strings.HasPrefix(e.Name, gateway.EnvPrefix) {
			continue
		}
		if e.ValueFrom != nil {
			t.Errorf("%s comes from %+v: the test cannot check its value", e.Name, e.ValueFrom)
			continue
		}
		environ = append(environ, e.Name+"="+e.Value)
	}
	cfg, err := gateway.ParseEnviron(c.Args, environ, io.Discard)
	if err != nil {
		t.Fatalf("the gateway would refuse to start: %v", err)
	}
	return cfg
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return port
}

// imageUser is the uid of the image's USER (deploy/Containerfile).
func imageUser(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../Containerfile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^USER\s+(\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("deploy/Containerfile has no numeric USER")
	}
	return string(m[1])
}

// goMemLimit parses a GOMEMLIMIT value (a byte count with an optional B,
// KiB, MiB, GiB or TiB suffix) into bytes.
func goMemLimit(t *testing.T, s string) int64 {
	t.Helper()
	units := []struct {
		suffix string
		factor int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			if err != nil {
				t.Fatalf("GOMEMLIMIT %q: %v", s, err)
			}
			return v * u.factor
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("GOMEMLIMIT %q: %v", s, err)
	}
	return v
}
