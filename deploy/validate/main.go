// Command validate checks rendered Kubernetes manifests (`helm template` output) offline.
//
// Every object is decoded strictly into the official API types (k8s.io/api, and the Prometheus Operator's
// for ServiceMonitor): an unknown or duplicated field, a wrong type or a kind that no registered group
// knows fails, as the API server would refuse it. Then the objects are checked against each other and
// against what the chart promises (see check.go): probes, drain timing, Service protocols, volumes.
//
// Usage:
//
//	helm template r deploy/helm/visionrpc | validate -expect Deployment=1 -expect Service=2 [-json objects.json]
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// expectations maps a kind to how many objects of it the manifests must hold (-expect Kind=N).
type expectations map[string]int

func (e expectations) String() string { return fmt.Sprint(map[string]int(e)) }

func (e expectations) Set(text string) error {
	kind, count, ok := strings.Cut(text, "=")
	n, err := strconv.Atoi(count)
	if !ok || err != nil || n < 0 {
		return fmt.Errorf("expected Kind=N, got %q", text)
	}
	e[kind] = n
	return nil
}

func newScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme, autoscalingv2.AddToScheme,
		monitoringv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			return nil, err
		}
	}
	return scheme, nil
}

// decodeAll splits a YAML stream into documents and decodes each strictly; empty documents are skipped.
func decodeAll(in io.Reader, scheme *runtime.Scheme) ([]runtime.Object, error) {
	serializer := kjson.NewSerializerWithOptions(
		kjson.DefaultMetaFactory, scheme, scheme, kjson.SerializerOptions{Yaml: true, Strict: true},
	)
	reader := utilyaml.NewYAMLReader(bufio.NewReader(in))
	var objects []runtime.Object
	for index := 0; ; index++ {
		document, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return objects, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", index, err)
		}
		if isBlank(document) {
			continue
		}
		// In strict mode the serializer returns the object and a strict-decoding error together; either
		// kind of error fails.
		object, gvk, err := serializer.Decode(document, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", index, describe(document), err)
		}
		object.GetObjectKind().SetGroupVersionKind(*gvk)
		objects = append(objects, object)
	}
}

func isBlank(document []byte) bool {
	for _, line := range strings.Split(string(document), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") && line != "---" {
			return false
		}
	}
	return true
}

// describe names a document by its "# Source:" comment (helm template writes one), for error messages.
func describe(document []byte) string {
	for _, line := range strings.Split(string(document), "\n") {
		if source, ok := strings.CutPrefix(line, "# Source: "); ok {
			return source
		}
	}
	return "no source comment"
}

func run() error {
	expect := expectations{}
	flag.Var(expect, "expect", "Kind=N: the manifests hold exactly N objects of Kind (repeatable)")
	dump := flag.String("json", "", "also write the decoded objects to this file, as a JSON array")
	flag.Parse()
	scheme, err := newScheme()
	if err != nil {
		return err
	}
	objects, err := decodeAll(os.Stdin, scheme)
	if err != nil {
		return err
	}
	if len(objects) == 0 {
		return errors.New("no objects in the input")
	}
	if *dump != "" {
		encoded, err := json.Marshal(objects)
		if err != nil {
			return err
		}
		if err := os.WriteFile(*dump, encoded, 0o644); err != nil {
			return err
		}
	}
	counts := map[string]int{}
	for _, object := range objects {
		counts[object.GetObjectKind().GroupVersionKind().Kind]++
	}
	var problems []string
	for kind, want := range expect {
		if counts[kind] != want {
			problems = append(problems, fmt.Sprintf("expected %d %s, got %d", want, kind, counts[kind]))
		}
	}
	problems = append(problems, check(objects)...)
	kinds := make([]string, 0, len(counts))
	for kind, n := range counts {
		kinds = append(kinds, fmt.Sprintf("%s=%d", kind, n))
	}
	sort.Strings(kinds)
	if len(problems) > 0 {
		sort.Strings(problems)
		return fmt.Errorf("%d objects (%s) decoded strictly, but:\n  %s",
			len(objects), strings.Join(kinds, " "), strings.Join(problems, "\n  "))
	}
	fmt.Printf("ok: %d objects decoded strictly and checked (%s)\n", len(objects), strings.Join(kinds, " "))
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "validate:", err)
		os.Exit(1)
	}
}
