{{/*
Object name prefix: the release name when it already contains the chart name
(release "roomkeeper-operator" gives the names of deploy/rbac.yaml), else
"<release>-roomkeeper-operator".
*/}}
{{- define "roomkeeper-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
Selector labels. app.kubernetes.io/name is fixed: the NetworkPolicy the
operator writes for every LiveRoomCluster admits the node admin port only from
pods labelled app.kubernetes.io/name=roomkeeper-operator (operator/src/resources.rs).
*/}}
{{- define "roomkeeper-operator.selectorLabels" -}}
app.kubernetes.io/name: roomkeeper-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "roomkeeper-operator.labels" -}}
{{ include "roomkeeper-operator.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: roomkeeper
{{- end -}}

{{- define "roomkeeper-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "roomkeeper-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "roomkeeper-operator.leaseName" -}}
{{- default (include "roomkeeper-operator.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{/*
The one document of kind $kind in deploy/rbac.yaml (files/rbac.yaml links to
it), as a dict. The chart's RBAC rules are read from that file, so the chart
and the RBAC the end-to-end test runs the operator under cannot drift apart.
Usage: include "roomkeeper-operator.rbacDoc" (list . "ClusterRole") | fromYaml
*/}}
{{- define "roomkeeper-operator.rbacDoc" -}}
{{- $root := index . 0 -}}
{{- $kind := index . 1 -}}
{{- $found := list -}}
{{- range $doc := regexSplit "(?m)^---[ \t]*$" ($root.Files.Get "files/rbac.yaml") -1 -}}
{{- $obj := fromYaml $doc -}}
{{- if and $obj (eq (toString (get $obj "kind")) $kind) -}}
{{- $found = append $found $obj -}}
{{- end -}}
{{- end -}}
{{- if ne (len $found) 1 -}}
{{- fail (printf "files/rbac.yaml (deploy/rbac.yaml) must hold exactly one %s, found %d" $kind (len $found)) -}}
{{- end -}}
{{- index $found 0 | toYaml -}}
{{- end -}}
