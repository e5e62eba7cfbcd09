package main

import (
	"fmt"
	"strconv"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
)

// readyService is the health service whose SERVING means "the default model is warm".
const readyService = "visionrpc.v1.InferenceService"

// fileFlags are server flags that name files the pod must mount.
var fileFlags = []string{
	"--tls-cert-file", "--tls-key-file", "--tls-client-ca-file", "--api-keys-file", "--admin-keys-file",
	"--engine-cache-dir", "--model-repository",
}

// check returns what is wrong between the objects: each reference resolves and the chart's promises hold.
func check(objects []runtime.Object) []string {
	var problems []string
	report := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	var deployments []*appsv1.Deployment
	var services []*corev1.Service
	for _, object := range objects {
		switch o := object.(type) {
		case *appsv1.Deployment:
			deployments = append(deployments, o)
		case *corev1.Service:
			services = append(services, o)
		}
	}
	for _, d := range deployments {
		checkDeployment(d, report)
	}
	for _, object := range objects {
		switch o := object.(type) {
		case *corev1.Service:
			checkService(o, deployments, report)
		case *policyv1.PodDisruptionBudget:
			if o.Spec.Selector == nil || selects(o.Spec.Selector.MatchLabels, deployments) == nil {
				report("PodDisruptionBudget %s selects no Deployment's pods", o.Name)
			}
		case *autoscalingv2.HorizontalPodAutoscaler:
			target := findDeployment(o.Spec.ScaleTargetRef.Name, deployments)
			if o.Spec.ScaleTargetRef.Kind != "Deployment" || target == nil {
				report("HorizontalPodAutoscaler %s targets no Deployment of these manifests", o.Name)
			} else if target.Spec.Replicas != nil {
				report("Deployment %s sets replicas while HPA %s scales it (each upgrade would reset it)",
					target.Name, o.Name)
			}
		case *monitoringv1.ServiceMonitor:
			checkServiceMonitor(o, services, report)
		}
	}
	return problems
}

func checkDeployment(d *appsv1.Deployment, report func(string, ...any)) {
	pod := d.Spec.Template.Spec
	if d.Spec.Selector == nil || !labels.SelectorFromSet(d.Spec.Selector.MatchLabels).Matches(
		labels.Set(d.Spec.Template.Labels)) {
		report("Deployment %s: its selector does not match its pod template's labels", d.Name)
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	for _, c := range pod.Containers {
		where := fmt.Sprintf("Deployment %s container %s", d.Name, c.Name)
		for name, probe := range map[string]*corev1.Probe{
			"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe,
		} {
			switch {
			case probe == nil:
				report("%s: no %s probe", where, name)
			case probe.GRPC == nil && probe.Exec == nil:
				report("%s: the %s probe is neither gRPC health nor exec", where, name)
			case name != "liveness" && probe.GRPC != nil &&
				(probe.GRPC.Service == nil || *probe.GRPC.Service != readyService):
				report("%s: the %s probe must ask for %s (the default model warm)", where, name, readyService)
			}
		}
		flags := flagValues(c.Args)
		drain := seconds(flags["--shutdown-notice-s"]) + seconds(flags["--shutdown-grace-s"])
		if pod.TerminationGracePeriodSeconds == nil || float64(*pod.TerminationGracePeriodSeconds) <= drain {
			report("%s: terminationGracePeriodSeconds must exceed the drain (notice + grace = %.1f s)", where, drain)
		}
		mounts := map[string]string{}
		for _, m := range c.VolumeMounts {
			volume, ok := volumes[m.Name]
			if !ok {
				report("%s: mounts %s, which is no volume of the pod", where, m.Name)
			} else if volume.Secret != nil && m.SubPath != "" {
				report("%s: secret %s mounted with subPath never sees a renewed file", where, m.Name)
			}
			mounts[m.MountPath] = m.Name
		}
		for _, name := range fileFlags {
			if path, ok := flags[name]; ok && !under(path, mounts) {
				report("%s: %s %s lies on no mounted volume", where, name, path)
			}
		}
		if _, gpu := c.Resources.Limits["nvidia.com/gpu"]; gpu {
			if _, ok := flags["--engine-cache-dir"]; !ok {
				report("%s: a GPU container without --engine-cache-dir rebuilds TensorRT engines on each start", where)
			}
		}
	}
}

func checkService(s *corev1.Service, deployments []*appsv1.Deployment, report func(string, ...any)) {
	target := selects(s.Spec.Selector, deployments)
	if target == nil {
		report("Service %s selects no Deployment's pods", s.Name)
		return
	}
	for _, port := range s.Spec.Ports {
		if port.Name == "grpc" && (port.AppProtocol == nil || *port.AppProtocol == "") {
			report("Service %s port grpc has no appProtocol (meshes would treat it as opaque TCP)", s.Name)
		}
		if port.TargetPort.StrVal != "" && !hasContainerPort(target, port.TargetPort.StrVal) {
			report("Service %s port %s targets %q, which no container names", s.Name, port.Name, port.TargetPort.StrVal)
		}
	}
}

func checkServiceMonitor(m *monitoringv1.ServiceMonitor, services []*corev1.Service, report func(string, ...any)) {
	for _, s := range services {
		if !labels.SelectorFromSet(m.Spec.Selector.MatchLabels).Matches(labels.Set(s.Labels)) {
			continue
		}
		for _, endpoint := range m.Spec.Endpoints {
			found := false
			for _, port := range s.Spec.Ports {
				found = found || port.Name == endpoint.Port
			}
			if !found {
				report("ServiceMonitor %s scrapes port %q, which Service %s lacks", m.Name, endpoint.Port, s.Name)
			}
		}
		return
	}
	report("ServiceMonitor %s selects no Service", m.Name)
}

// selects returns the Deployment whose pods the selector picks, or nil.
func selects(selector map[string]string, deployments []*appsv1.Deployment) *appsv1.Deployment {
	if len(selector) == 0 {
		return nil
	}
	for _, d := range deployments {
		if labels.SelectorFromSet(selector).Matches(labels.Set(d.Spec.Template.Labels)) {
			return d
		}
	}
	return nil
}

func findDeployment(name string, deployments []*appsv1.Deployment) *appsv1.Deployment {
	for _, d := range deployments {
		if d.Name == name {
			return d
		}
	}
	return nil
}

func hasContainerPort(d *appsv1.Deployment, name string) bool {
	for _, c := range d.Spec.Template.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == name {
				return true
			}
		}
	}
	return false
}

// flagValues reads "--flag value" pairs from a container's args.
func flagValues(args []string) map[string]string {
	values := map[string]string{}
	for i := 0; i+1 < len(args); i++ {
		if strings.HasPrefix(args[i], "--") && !strings.HasPrefix(args[i+1], "--") {
			values[args[i]] = args[i+1]
		}
	}
	return values
}

func seconds(text string) float64 {
	value, _ := strconv.ParseFloat(text, 64)
	return value
}

func under(path string, mounts map[string]string) bool {
	for mountPath := range mounts {
		if path == mountPath || strings.HasPrefix(path, strings.TrimSuffix(mountPath, "/")+"/") {
			return true
		}
	}
	return false
}
