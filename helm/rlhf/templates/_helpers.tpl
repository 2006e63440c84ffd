{{/* The release's name prefix of every object (63 characters at most). */}}
{{- define "rlhf.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "rlhf.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "rlhf.selector" (list . "learner") */}}
{{- define "rlhf.selector" -}}
app.kubernetes.io/name: {{ (index . 0).Chart.Name }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "rlhf.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The etcd endpoints the run file's [cluster] section lists. */}}
{{- define "rlhf.etcdEndpoints" -}}
{{- $endpoints := list -}}
{{- if .Values.etcd.enabled -}}
{{- $name := printf "%s-etcd" (include "rlhf.fullname" .) -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $endpoints = append $endpoints (printf "%s-%d.%s:2379" $name $i $name) -}}
{{- end -}}
{{- else -}}
{{- $endpoints = .Values.etcd.endpoints -}}
{{- end -}}
{{- toJson $endpoints -}}
{{- end -}}

{{/* The name every role's certificate must carry (cluster.tls.server_name). */}}
{{- define "rlhf.serverName" -}}
{{- .Values.tls.serverName | default (include "rlhf.fullname" .) -}}
{{- end -}}

{{/* Environment of every rlhf container. */}}
{{- define "rlhf.env" -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: RLHF_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: RLHF_GPU_CACHE
  value: {{ .Values.gpuCache | quote }}
{{- with .Values.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Volume mounts of every rlhf container. */}}
{{- define "rlhf.volumeMounts" -}}
- name: run-file
  mountPath: /etc/rlhf
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if or .Values.models.existingClaim .Values.models.hostPath }}
- name: models
  mountPath: /models
  readOnly: true
{{- end }}
{{- include "rlhf.secretMounts" . }}
{{- end -}}

{{/* Mounts of the TLS Secrets (every rlhf container, the helm test pod too; the admin tokens
     only reach the coordinator). */}}
{{- define "rlhf.secretMounts" -}}
{{- if .Values.tls.existingSecret }}
- name: tls
  mountPath: /etc/rlhf-tls
  readOnly: true
{{- end }}
{{- if .Values.etcd.tls.existingSecret }}
- name: etcd-tls
  mountPath: /etc/rlhf-etcd-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "rlhf.secretVolumes" -}}
{{- if .Values.tls.existingSecret }}
- name: tls
  secret:
    secretName: {{ .Values.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if .Values.etcd.tls.existingSecret }}
- name: etcd-tls
  secret:
    secretName: {{ .Values.etcd.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* Volumes of every rlhf pod (the output volume is added by the roles that write it). */}}
{{- define "rlhf.volumes" -}}
- name: run-file
  configMap:
    name: {{ include "rlhf.fullname" . }}-run
- name: tmp
  emptyDir: {}
{{- if .Values.models.existingClaim }}
- name: models
  persistentVolumeClaim:
    claimName: {{ .Values.models.existingClaim }}
    readOnly: true
{{- else if .Values.models.hostPath }}
- name: models
  hostPath:
    path: {{ .Values.models.hostPath }}
    type: Directory
{{- end }}
{{- include "rlhf.secretVolumes" . }}
{{- end -}}

{{- define "rlhf.outputVolume" -}}
- name: output
  persistentVolumeClaim:
    claimName: {{ .Values.output.existingClaim | default (printf "%s-output" (include "rlhf.fullname" .)) }}
{{- end -}}

{{/* Scheduling and pod settings of one role: include "rlhf.podSpec" (list . .Values.learner) */}}
{{- define "rlhf.podSpec" -}}
{{- $top := index . 0 -}}
{{- $role := index . 1 -}}
securityContext:
  {{- toYaml $top.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ $role.terminationGracePeriodSeconds }}
{{- with $top.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $role.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $role.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $role.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The container of a learner, rollout worker or scorer pod:
     include "rlhf.roleContainer" (list . "rollout" .Values.rollout .Values.ports.rollout) */}}
{{- define "rlhf.roleContainer" -}}
{{- $top := index . 0 -}}
{{- $role := index . 1 -}}
{{- $values := index . 2 -}}
{{- $port := index . 3 -}}
- name: {{ $role }}
  image: {{ include "rlhf.image" $top }}
  imagePullPolicy: {{ $top.Values.image.pullPolicy }}
  command: [rlhf]
  args:
    - {{ $role }}
    - --config=/etc/rlhf/run.toml
    - --listen=0.0.0.0:{{ $port }}
    - --advertise=$(POD_IP):{{ $port }}
  env:
    {{- include "rlhf.env" $top | nindent 4 }}
    {{- if ne $role "learner" }}
    # `--index`: the Indexed Job pod's completion index.
    - name: RLHF_INDEX
      valueFrom:
        fieldRef:
          fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']
    {{- end }}
    {{- with $values.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: grpc
      containerPort: {{ $port }}
  readinessProbe:
    tcpSocket:
      port: grpc
    periodSeconds: 5
  securityContext:
    {{- toYaml $top.Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml $values.resources | nindent 4 }}
  volumeMounts:
    {{- include "rlhf.volumeMounts" $top | nindent 4 }}
    {{- if eq $role "learner" }}
    - name: output
      mountPath: /data
    {{- end }}
    {{- with $values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}
