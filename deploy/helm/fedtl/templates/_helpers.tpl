{{/* Names, labels and the security settings every pod shares. */}}

{{- define "fedtl.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fedtl.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "coordinator"). */}}
{{- define "fedtl.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "fedtl.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* The images run as uid/gid 10001 (deploy/docker/Dockerfile). */}}
{{- define "fedtl.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "fedtl.containerSecurity" -}}
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "fedtl.pvcSpec" -}}
accessModes: [ReadWriteOnce]
{{- with .storageClass }}
storageClassName: {{ . | quote }}
{{- end }}
resources:
  requests:
    storage: {{ .size | quote }}
{{- end -}}

{{- define "fedtl.postgresSecret" -}}
{{- default (printf "%s-postgres" (include "fedtl.fullname" .)) .Values.mlflow.postgres.passwordSecret -}}
{{- end -}}

{{- define "fedtl.mlflowHost" -}}
{{- printf "%s-mlflow" (include "fedtl.fullname" .) -}}
{{- end -}}

{{/* The Secret with ca.crt, server.pem, server.key (and allowed_sites.txt): given, or made from coordinator.certs. */}}
{{- define "fedtl.certsSecret" -}}
{{- if .Values.coordinator.certsSecret -}}
{{- .Values.coordinator.certsSecret -}}
{{- else -}}
{{- printf "%s-certs" (include "fedtl.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* A site's objects: its Deployment and ConfigMap are named "fedtl.siteName", its key Secret that plus
     "-key", its pods are labelled component "fedtl.siteComponent". A name over Kubernetes' limits (63
     characters for a label value; 59 + "-key" for a name) is cut and ends in a hash of the site's
     name, so two long names that share a prefix still name different objects.
     Call with (dict "root" $ "site" $site). */}}
{{- define "fedtl.fitName" -}}
{{- $name := regexReplaceAll "-+$" .name "" -}}
{{- if gt (len $name) .max -}}
{{- printf "%s-%s" (regexReplaceAll "-+$" ($name | trunc (sub .max 9 | int)) "") (sha256sum .site | trunc 8) -}}
{{- else -}}
{{- $name -}}
{{- end -}}
{{- end -}}

{{- define "fedtl.siteSlug" -}}
{{- .site.name | replace "_" "-" | lower -}}
{{- end -}}

{{- define "fedtl.siteComponent" -}}
{{- $name := printf "site-%s" (include "fedtl.siteSlug" .) -}}
{{- include "fedtl.fitName" (dict "name" $name "max" 63 "site" .site.name) -}}
{{- end -}}

{{- define "fedtl.siteName" -}}
{{- $name := printf "%s-site-%s" (include "fedtl.fullname" .root) (include "fedtl.siteSlug" .) -}}
{{- include "fedtl.fitName" (dict "name" $name "max" 59 "site" .site.name) -}}
{{- end -}}
