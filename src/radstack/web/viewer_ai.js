/*
 * radstack: AI results drawn on the radiograph as soon as a study opens (docs/viewer.md, "AI results
 * in the viewer"). Appended to the generated app-config.js after `window.config = {...};`.
 *
 * OHIF 3.13.2 draws an SR's regions and numbers on the image (its DICOMSRDisplay tool) only in the
 * SR viewport, that is when the SR's display set is the one hung in a viewport; its default hanging
 * protocol hangs the first series with image frames, never an SR. So:
 *
 * 1. A small extension (OHIF loads an object in `extensions` as it is) replaces the hanging protocol
 *    registered as "default" (HangingProtocolService.addProtocol overwrites by id, which it documents
 *    as the way to set a new default) with a copy of OHIF's own default whose one viewport prefers an
 *    AI result with regions (custom attribute `radstackAIResult`) over an image series; a series
 *    chosen in the URL (initialSeriesInstanceUID) still wins. A study without such a result, or an
 *    AI result that found nothing, opens on the image exactly as before.
 * 2. An SR in the active viewport makes the measurement-tracking extension ask whether to load it as
 *    tracked measurements (customization `measurement.promptHydrateStructuredReport`). For an AI
 *    result the answer is "not now", given without asking: the boxes stay a read-only overlay with
 *    their "Certainty of Finding" text, and the radiologist measures on the image series as usual.
 *    Every other SR is asked about as before.
 *
 * 3. A TID 1500 report with nothing to draw (an AI result that found nothing has no measurement
 *    group at all) breaks OHIF's SR viewport ("Something went wrong", an empty viewport) when its
 *    series is opened: the viewport shows the report's first measurement's image. The extension
 *    marks such a report as not an imaging measurement report as its display set is made, so OHIF
 *    shows it in its text viewport instead ("Fracture of bone: Absent", the certainty, the images).
 *
 * An AI result is a TID 1500 Imaging Measurement Report with a measurement group that names its
 * algorithm (TID 4019 Algorithm Name) and has a region (SCOORD): what radstack.ai.results writes,
 * or any other algorithm's report of that shape.
 *
 * A labeling task (its customization, /viewer/tasks/<id>.jsonc) sets `radstack.aiResults`:
 *
 * - `proposals` (the project shows AI proposals): the AI result is still hung first, but loaded at once,
 *   without asking, as editable measurements (OHIF's SR hydration) that the reader keeps, edits or
 *   deletes before saving. Each is labelled from the task's label list by its finding's meaning
 *   ("Fracture of bone"), and loses its link to the AI report, so that "Create SR" makes the reader's
 *   report a series of its own instead of a new version of the AI's.
 * - `hidden` (it does not): AI results are neither hung nor listed (their display sets are removed as
 *   they are made), and never loaded. The server's blinding hides them too; this does not rely on it.
 *
 * Without it (`overlay`, every other page) AI results are shown as described above.
 */
(function (config) {
  'use strict';
  const IMAGING_MEASUREMENTS = '126010';
  const MEASUREMENT_GROUP = '125007';
  const ALGORITHM_NAME = '111001';
  const AI_RESULT = 'radstackAIResult';
  const AI_PROPOSALS = 'radstackAIProposals';
  // RESPONSE.CANCEL of the measurement-tracking extension: do not load this SR now, and do not ask
  // again for its series. HYDRATE: it was loaded as tracked measurements.
  const CANCEL = 0;
  const HYDRATE = 5;
  const OVERLAY = 'overlay';
  const PROPOSALS = 'proposals';
  const HIDDEN = 'hidden';

  let services = null;
  /** How AI results are shown on this page: a labeling task's `radstack.aiResults`, else overlay. */
  function aiResultsMode() {
    const customizations = services && services.customizationService;
    const mode = customizations && customizations.getCustomization('radstack.aiResults');
    return mode === PROPOSALS || mode === HIDDEN ? mode : OVERLAY;
  }

  const items = value => (value == null ? [] : Array.isArray(value) ? value : [value]);
  const isConcept = (item, value) => {
    const concept = items(item && item.ConceptNameCodeSequence)[0];
    return Boolean(concept) && concept.CodeValue === value && concept.CodingSchemeDesignator === 'DCM';
  };

  const hasRegion = item =>
    item.ValueType === 'SCOORD' || item.ValueType === 'SCOORD3D' || items(item.ContentSequence).some(hasRegion);

  /** The measurement groups of a TID 1500 display set's newest report. */
  function measurementGroups(displaySet) {
    if (!displaySet || displaySet.Modality !== 'SR' || !displaySet.isImagingMeasurementReport) {
      return [];
    }
    const report = displaySet.instance || items(displaySet.instances)[0];
    const measurements = items(report && report.ContentSequence).find(item => isConcept(item, IMAGING_MEASUREMENTS));
    return items(measurements && measurements.ContentSequence).filter(item => isConcept(item, MEASUREMENT_GROUP));
  }

  function isAIResult(displaySet) {
    return measurementGroups(displaySet).some(group => {
      const content = items(group.ContentSequence);
      return content.some(item => isConcept(item, ALGORITHM_NAME)) && content.some(item => item.ValueType === 'SCOORD');
    });
  }

  const codeOf = value => (Array.isArray(value) ? value[0] : value);

  /**
   * `onBeforeSRHydration` for AI proposals: each box of an AI result gets a label from the task's list
   * (the item whose value or text is its finding's meaning, else the meaning itself) and forgets the
   * report it came from (`predecessorImageId`: "Create SR" would otherwise offer the AI's series).
   */
  function asProposals(measurementsByType, displaySet) {
    if (aiResultsMode() !== PROPOSALS || !isAIResult(displaySet)) {
      return measurementsByType;
    }
    const labels = services.customizationService.getCustomization('measurementLabels');
    const choices = items(labels && labels.items);
    for (const measurements of Object.values(measurementsByType || {})) {
      for (const measurement of items(measurements)) {
        delete measurement.predecessorImageId;
        const data = measurement.annotation && measurement.annotation.data;
        const finding = codeOf(measurement.finding);
        const meaning = finding && finding.CodeMeaning;
        if (data && !data.label && meaning) {
          const wanted = String(meaning).toLowerCase();
          const choice = choices.find(
            item => String(item.value).toLowerCase() === wanted || String(item.label).toLowerCase() === wanted
          );
          data.label = choice ? choice.value : meaning;
        }
      }
    }
    return measurementsByType;
  }

  /**
   * Runs `hydrate` with the AI report made readable by OHIF's SR hydration, then puts it back.
   *
   * @cornerstonejs/adapters (MeasurementReport.getSetupMeasurementData) looks for a box's SCOORD under
   * the group's first NUM, where OHIF writes it, or, when the group has no NUM, in the group itself.
   * An AI group holds its SCOORD itself and a NUM (the box's Certainty of Finding) beside it, so the
   * adapter finds no coordinates ("No spatial coordinates group found") and skips the box. Without the
   * NUMs that hold no SCOORD, the group reads as a box (the certainty is not a measurement of it).
   */
  function hydratingAIResult(displaySet, hydrate) {
    const changed = [];
    for (const group of measurementGroups(displaySet)) {
      const content = items(group.ContentSequence);
      const scoordBeside = content.some(item => item.ValueType === 'SCOORD');
      const kept = content.filter(item => item.ValueType !== 'NUM' || items(item.ContentSequence).some(hasRegion));
      if (scoordBeside && kept.length !== content.length) {
        changed.push([group, group.ContentSequence]);
        group.ContentSequence = kept;
      }
    }
    try {
      return hydrate();
    } finally {
      changed.forEach(([group, content]) => {
        group.ContentSequence = content;
      });
    }
  }

  function showAsTextIfNothingToDraw(displaySet) {
    if (displaySet && displaySet.Modality === 'SR' && displaySet.isImagingMeasurementReport) {
      if (!measurementGroups(displaySet).some(hasRegion)) {
        displaySet.isImagingMeasurementReport = false;
      }
    }
  }

  function aiResultsFirst(protocol) {
    const selector = protocol && protocol.displaySetSelectors && protocol.displaySetSelectors.defaultDisplaySetId;
    if (!selector || !Array.isArray(selector.seriesMatchingRules)) {
      return null;
    }
    const copy = structuredClone(protocol);
    const rules = copy.displaySetSelectors.defaultDisplaySetId.seriesMatchingRules;
    // OHIF's weights: an image series 10, the URL's choice 20. The URL's choice must beat an AI result
    // (30) even on an image series, so it goes to 40.
    for (const rule of rules) {
      if (rule.attribute === 'isDisplaySetFromUrl') {
        rule.weight = 40;
      }
    }
    rules.push({ attribute: AI_RESULT, weight: 30, constraint: { equals: true } });
    // In a labeling task that shows AI proposals, the AI result is hung even over the task's image (the
    // URL's initialSOPInstanceUID): hung, it is loaded as the reader's editable measurements.
    rules.push({ attribute: AI_PROPOSALS, weight: 50, constraint: { equals: true } });
    copy.name = 'Default (AI results first)';
    return copy;
  }

  let displaySetsAdded = null;

  config.extensions = [
    ...(config.extensions || []),
    {
      id: '@radstack/extension-ai-results',
      preRegistration({ servicesManager }) {
        services = servicesManager.services;
        services.hangingProtocolService.addCustomAttribute(
          AI_RESULT,
          'AI result with regions (radstack)',
          displaySet => aiResultsMode() !== HIDDEN && isAIResult(displaySet)
        );
        services.hangingProtocolService.addCustomAttribute(
          AI_PROPOSALS,
          'AI result to load as proposals (radstack)',
          displaySet => aiResultsMode() === PROPOSALS && isAIResult(displaySet)
        );
      },
      onModeEnter({ servicesManager }) {
        const { displaySetService } = servicesManager.services;
        displaySetsAdded = displaySetService.subscribe(displaySetService.EVENTS.DISPLAY_SETS_ADDED, event => {
          const added = items(event && event.displaySetsAdded);
          added.forEach(showAsTextIfNothingToDraw);
          if (aiResultsMode() === HIDDEN) {
            added
              .filter(isAIResult)
              .forEach(displaySet => displaySetService.deleteDisplaySet(displaySet.displaySetInstanceUID));
          }
        });
      },
      onModeExit() {
        if (displaySetsAdded) {
          displaySetsAdded.unsubscribe();
          displaySetsAdded = null;
        }
      },
      getHangingProtocolModule({ servicesManager }) {
        const { hangingProtocolService } = servicesManager.services;
        let protocol = null;
        try {
          protocol = aiResultsFirst(hangingProtocolService.getProtocolById('default'));
        } catch (error) {
          console.warn('radstack: no default hanging protocol to put AI results first in', error);
        }
        return protocol ? [{ name: 'default', protocol }] : [];
      },
    },
  ];

  // A `mode` phase block (applied on every mode enter, "*": every mode): the measurement-tracking
  // extension, whose prompt this wraps, is loaded and registers its default only when a mode that
  // depends on it is entered, after the app-wide (`global`) customizations were applied.
  const customizations = (config.customizationService = config.customizationService || {});
  const everyMode = ((customizations.mode = customizations.mode || {})['*'] = customizations.mode['*'] || {});
  everyMode['measurement.promptHydrateStructuredReport'] = {
    $apply: original =>
      typeof original !== 'function'
        ? original
        : function promptHydrateUnlessAIResult(context, machineContext, event) {
            const { displaySetService } = context.servicesManager.services;
            const displaySet = displaySetService.getDisplaySetByUID(event.displaySetInstanceUID);
            if (!isAIResult(displaySet)) {
              return original(context, machineContext, event);
            }
            const answer = {
              userResponse: CANCEL,
              displaySetInstanceUID: event.displaySetInstanceUID,
              srSeriesInstanceUID: displaySet.SeriesInstanceUID,
              viewportId: event.viewportId,
            };
            if (aiResultsMode() !== PROPOSALS) {
              return Promise.resolve(answer);
            }
            // What the measurement-tracking extension's own HYDRATE_SR does, without asking; its
            // state machine then shows the image with the measurements (jumpToSameImageInActiveViewport).
            const hydrated = hydratingAIResult(displaySet, () =>
              context.commandsManager.runCommand(
                'hydrateStructuredReport',
                { displaySetInstanceUID: event.displaySetInstanceUID },
                'CORNERSTONE_STRUCTURED_REPORT'
              )
            );
            return Promise.resolve(hydrated).then(result => ({
              ...answer,
              userResponse: HYDRATE,
              StudyInstanceUID: result && result.StudyInstanceUID,
              SeriesInstanceUIDs: (result && result.SeriesInstanceUIDs) || [],
            }));
          },
  };
  // Read by OHIF's SR hydration (cornerstone-dicom-sr hydrateStructuredReport) as `{value: fn}`.
  everyMode.onBeforeSRHydration = {
    $apply: original => ({
      value: ({ storedMeasurementByAnnotationType, displaySet }) => {
        const before = original && typeof original.value === 'function' ? original.value : null;
        const stored = before
          ? before({ storedMeasurementByAnnotationType, displaySet })
          : storedMeasurementByAnnotationType;
        return asProposals(stored, displaySet);
      },
    }),
  };
})(window.config);
