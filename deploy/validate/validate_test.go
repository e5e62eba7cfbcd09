package main

import (
	"strings"
	"testing"
)

// A minimal manifest the checks accept; each case below breaks one thing in it.
const good = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: v}
spec:
  selector: {matchLabels: {app: v}}
  template:
    metadata: {labels: {app: v}}
    spec:
      terminationGracePeriodSeconds: 35
      containers:
        - name: c
          image: visionrpc:cpu
          args: [--shutdown-notice-s, "5", --shutdown-grace-s, "20", --tls-cert-file, /etc/tls/tls.crt]
          ports: [{name: grpc, containerPort: 50051}]
          startupProbe: {grpc: {port: 50051, service: visionrpc.v1.InferenceService}}
          readinessProbe: {grpc: {port: 50051, service: visionrpc.v1.InferenceService}}
          livenessProbe: {grpc: {port: 50051, service: ""}}
          volumeMounts: [{name: tls, mountPath: /etc/tls}]
      volumes: [{name: tls, secret: {secretName: t}}]
---
apiVersion: v1
kind: Service
metadata: {name: v}
spec:
  selector: {app: v}
  ports: [{name: grpc, port: 50051, targetPort: grpc, appProtocol: grpc}]
`

func TestValidate(t *testing.T) {
	cases := []struct {
		name    string
		old     string // replaced in good by new
		new     string
		problem string // "" accepts
	}{
		{"accepted as is", "", "", ""},
		{"unknown field", "terminationGracePeriodSeconds: 35", "terminationGracePeriodSeconds: 35\n      gracePeriod: 1", `unknown field "spec.template.spec.gracePeriod"`},
		{"duplicate field", "kind: Service", "kind: Service\nkind: Service", `already set in map`},
		{"wrong type", "containerPort: 50051", "containerPort: grpc", "cannot unmarshal"},
		{"unknown kind", "kind: Service", "kind: Servise", `no kind "Servise"`},
		{"grace within the drain", "terminationGracePeriodSeconds: 35", "terminationGracePeriodSeconds: 25", "must exceed the drain"},
		{"no readiness probe", "readinessProbe: {grpc: {port: 50051, service: visionrpc.v1.InferenceService}}", "", "no readiness probe"},
		{"readiness on liveness", "readinessProbe: {grpc: {port: 50051, service: visionrpc.v1.InferenceService}}", "readinessProbe: {grpc: {port: 50051}}", "must ask for visionrpc.v1.InferenceService"},
		{"file flag off the mounts", "/etc/tls/tls.crt", "/etc/other/tls.crt", "lies on no mounted volume"},
		{"secret through subPath", "mountPath: /etc/tls}", "mountPath: /etc/tls, subPath: tls.crt}", "never sees a renewed file"},
		{"no appProtocol", ", appProtocol: grpc}", "}", "has no appProtocol"},
		{"selector misses", "selector: {app: v}", "selector: {app: w}", "selects no Deployment"},
		{"target port unnamed", "targetPort: grpc", "targetPort: grcp", "which no container names"},
	}
	scheme, err := newScheme()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			manifest := good
			if c.old != "" {
				if !strings.Contains(good, c.old) {
					t.Fatalf("the case's text %q is not in the manifest", c.old)
				}
				manifest = strings.Replace(good, c.old, c.new, 1)
			}
			var problems []string
			objects, err := decodeAll(strings.NewReader(manifest), scheme)
			if err != nil {
				problems = []string{err.Error()}
			} else {
				problems = check(objects)
			}
			got := strings.Join(problems, "\n")
			switch {
			case c.problem == "" && got != "":
				t.Fatalf("expected no problem, got %s", got)
			case c.problem != "" && !strings.Contains(got, c.problem):
				t.Fatalf("expected a problem with %q, got %q", c.problem, got)
			}
		})
	}
}
