//go:build tools

// Package tools pins the Kubernetes commands built by ../build.
// The build tag keeps it out of normal builds; `go mod tidy` still sees the imports.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
